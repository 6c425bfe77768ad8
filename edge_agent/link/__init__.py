"""The link to the OTA server.

::

    client.py      HTTP client of the device API (urllib3): poll, reports, hardware, enrollment
    identity.py    enrollment and the stored device identity (token, pinned root and director key)
    telemetry.py   the persisted outbox of reports, sent in order, each id once

Imports nothing of the update, perception or bench packages.
"""

__all__: list[str] = []
