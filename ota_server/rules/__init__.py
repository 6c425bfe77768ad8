"""The server's pure rules: what a request or a report may say and what follows from it. No I/O.

::

    rollouts.py   rollout requests, cohort hashing, stage membership, advance and halt decisions
    reports.py    the report batch a device posts, validated field by field
    evidence.py   the gate evidence inside a report: type-checked, bounded, copied field by field
    quota.py      the per-device report quota: token buckets of reports and bytes
    devices.py    what a device may say of itself: name, tags, hardware profile, each bounded

Imports ``models`` and :mod:`ota_server.errors` only: never the store, Flask or SQLAlchemy.
"""

__all__: list[str] = []
