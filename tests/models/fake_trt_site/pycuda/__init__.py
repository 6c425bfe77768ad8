"""``import pycuda`` in a test subprocess: see ``pycuda.driver`` here and :mod:`tests.models.fake_tensorrt`."""
