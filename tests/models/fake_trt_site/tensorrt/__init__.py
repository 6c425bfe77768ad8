"""``import tensorrt`` in a test subprocess: the fake of :mod:`tests.models.fake_tensorrt`.

This directory goes first on the ``PYTHONPATH`` of agent subprocesses
(``fake_tensorrt.subprocess_env``); the environment says which version the
fake reports, whether its builds fail and where it logs its builds and loads.
"""

import os
import sys
from pathlib import Path

from tests.models import fake_tensorrt as _fake

_log = os.environ.get(_fake.ENV_LOG)
_fake.configure(
    version=os.environ.get(_fake.ENV_VERSION, "10.3.0"),
    fail_builds=os.environ.get(_fake.ENV_FAIL) == "1",
    log_path=Path(_log) if _log else None,
)
_fake.populate_tensorrt(sys.modules[__name__])
