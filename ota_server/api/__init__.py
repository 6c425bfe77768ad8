"""HTTP blueprints, one per resource, registered by :func:`ota_server.app.create_app`.

::

    common.py     request helpers: the services, the caller's principal, roles, JSON bodies
    health.py     /healthz, /api/v1/openapi.yaml and /metrics
    tuf.py        /tuf/metadata and /tuf/targets: the image repository, as files
    devices.py    enrollment, the assignment, reports, hardware; device views
    releases.py   publishing bundles, release views
    rollouts.py   rollouts and their actions
    fleet.py      fleet summary, audit log, API tokens
    dashboard.py  the HTML dashboard

Views parse, call :mod:`ota_server.fleet` or the store, and answer; the rules live elsewhere.
"""

__all__: list[str] = []
