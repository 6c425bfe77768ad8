"""``import pycuda.driver`` in a test subprocess: the fake device memory of :mod:`tests.models.fake_tensorrt`."""

import sys

from tests.models import fake_tensorrt as _fake

_fake.populate_pycuda_driver(sys.modules[__name__])
