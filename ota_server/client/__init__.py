"""The OTA server's one typed API client and the tools built on it; nothing of the server.

Installable alone (``pip install 'edgefleet[ctl]'``: urllib3 and tqdm besides the base
PyYAML and NumPy): no Flask, SQLAlchemy or database driver. Importing it loads none of ``ota_server``'s server modules
(``tests/test_dependency_rule.py`` checks).

- ``api.py`` — :class:`OtaClient`: one typed method per documented endpoint, the raw
  :meth:`OtaClient.request` for tests.
- ``schema.py`` — the API's shapes (TypedDicts) and :class:`RolloutRequest`.
- ``errors.py`` — :class:`ClientError` → :class:`Unreachable`, :class:`Refused`, :class:`BadAnswer`.
- ``bundle.py`` — a bundle directory as the tar ``POST /api/v1/releases`` takes.
- ``ctl.py`` — ``ota-ctl``, the fleet engineer's command line; ``ctl_render.py`` prints
  reason codes and gate evidence.
- ``watch.py`` — :class:`RolloutWatcher` and per-stage figures of a rollout's timeline.
- ``simulator.py`` — the fleet simulator's engine; ``simulate.py`` — ``edge-fleet-sim``.
"""

from ota_server.client.api import OtaClient, Response
from ota_server.client.errors import BadAnswer, ClientError, NotABundle, Refused, Unreachable
from ota_server.client.schema import TERMINAL_STATUSES, RolloutRequest

__all__ = [
    "TERMINAL_STATUSES",
    "BadAnswer",
    "ClientError",
    "NotABundle",
    "OtaClient",
    "Refused",
    "Response",
    "RolloutRequest",
    "Unreachable",
]
