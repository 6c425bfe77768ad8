"""Fleet logic: the rules of :mod:`ota_server.rules` applied to the store, in the caller's transaction.

::

    director.py   which release each device must run, as a signed, cached assignment
    service.py    rollouts: create, pause/resume/abort, rollback, evaluate, the rollout view
    ingest.py     report batches: stored once, applied to the device and its rollout outcome
    telemetry.py  what reports may cost: the per-device report quota, the report retention
    publish.py    a bundle upload: validated, stored as TUF targets and a release row, atomically
    coverage.py   which releases the fleet runs that a new bundle has no agreement expectation for

Uses :mod:`ota_server.storage` and :mod:`ota_server.trust`; knows nothing of Flask.
"""

__all__: list[str] = []
