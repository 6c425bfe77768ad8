"""TensorRT 10 backend: run a serialized engine with pycuda buffers.

The engine is deserialized with ``trt.Runtime``; its I/O tensors are found by
name (``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode``), host
buffers take each tensor's own dtype (``trt.nptype(engine.get_tensor_dtype(name))``:
float32 for a tensor-form variant, uint8 for a frame-form one), a
dynamic batch is set with ``set_input_shape``, device buffers are bound with
``set_tensor_address`` and a batch runs with ``execute_async_v3`` on a CUDA
stream. ``tensorrt`` and ``pycuda`` are imported lazily, inside
:class:`TrtRuntime`, so importing this module costs nothing on a CPU host.

This module does not build engines (:mod:`models.runtime.trt_build` does on a
device, ``optimize.tensorrt`` on a build host).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.runtime.errors import BackendUnavailable, InferenceError, ModelLoadError

__all__ = ["TrtRuntime", "tensorrt_version"]

log = logging.getLogger(__name__)


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return str(trt.__version__)


def _import_backends() -> tuple[Any, Any]:
    try:
        import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        raise BackendUnavailable("TensorRT is not installed (pip install 'edgefleet[tensorrt]')") from e
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        raise BackendUnavailable("pycuda is not installed (pip install 'edgefleet[tensorrt]')") from e
    return trt, cuda


@dataclass
class _Binding:
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]  # engine shape, -1 for dynamic dims
    is_input: bool
    host: Any = None  # page-locked numpy array
    device: Any = None  # pycuda DeviceAllocation
    capacity: int = 0  # bytes allocated


class TrtRuntime:
    """A TensorRT execution context for one engine file (implements ``Runtime``).

    Raises :class:`BackendUnavailable` without TensorRT/pycuda or a GPU and
    :class:`ModelLoadError` when the engine cannot be deserialized (wrong
    TensorRT version, other GPU, corrupt file). One caller at a time: ``run``
    holds a lock because a context has one set of bindings.
    """

    def __init__(self, engine: str | os.PathLike[str] | bytes, *, device: int = 0) -> None:
        trt, cuda = _import_backends()
        self._trt, self._cuda = trt, cuda
        self.source = "<bytes>" if isinstance(engine, bytes) else str(engine)
        if not isinstance(engine, bytes) and not Path(engine).is_file():
            raise ModelLoadError(f"engine file {self.source} does not exist")
        data = engine if isinstance(engine, bytes) else Path(engine).read_bytes()
        self._lock = threading.Lock()
        try:
            cuda.init()
            self._ctx = cuda.Device(device).retain_primary_context()
        except Exception as e:  # noqa: BLE001 - pycuda raises its own error family
            raise BackendUnavailable(f"no usable CUDA device {device}: {e}") from e
        self._ctx.push()
        try:
            self._load(data)
        finally:
            self._ctx.pop()

    def _load(self, data: bytes) -> None:
        trt, cuda = self._trt, self._cuda
        self._logger = trt.Logger(trt.Logger.WARNING)
        try:
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(data)
        except Exception as e:  # noqa: BLE001 - TensorRT raises RuntimeError/TypeError variants
            raise ModelLoadError(f"TensorRT cannot deserialize {self.source}: {e}") from e
        if self._engine is None:
            raise ModelLoadError(
                f"TensorRT cannot deserialize {self.source} (built with another TensorRT version or GPU?)"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ModelLoadError(f"TensorRT could not create an execution context for {self.source}")
        self._bindings: list[_Binding] = []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            self._bindings.append(
                _Binding(
                    name=name,
                    dtype=np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))),
                    shape=tuple(int(d) for d in self._engine.get_tensor_shape(name)),
                    is_input=self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                )
            )
        inputs = [b for b in self._bindings if b.is_input]
        if len(inputs) != 1:
            raise ModelLoadError(f"{self.source} has {len(inputs)} inputs; edgefleet models take one image tensor")
        self._input = inputs[0]
        self.input_name: str = self._input.name
        # the largest batch profile 0 accepts (None: a fixed batch, see the input shape)
        self.max_batch: int | None = None
        if self._input.shape and self._input.shape[0] < 0:
            self.max_batch = int(self._engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self.output_names: tuple[str, ...] = tuple(b.name for b in self._bindings if not b.is_input)
        self._stream = cuda.Stream()

    def _ensure(self, binding: _Binding, shape: tuple[int, ...]) -> None:
        nbytes = int(np.prod(shape)) * binding.dtype.itemsize
        if binding.capacity < nbytes:
            binding.device = self._cuda.mem_alloc(max(nbytes, 1))
            binding.capacity = nbytes
        if binding.host is None or binding.host.shape != shape:
            binding.host = self._cuda.pagelocked_empty(shape, binding.dtype)
        self._context.set_tensor_address(binding.name, int(binding.device))

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; returns every output by name. Raises :class:`InferenceError`."""
        if getattr(self, "_context", None) is None:
            raise InferenceError(f"the engine {self.source} is closed")
        inp = self._input
        if not isinstance(batch, np.ndarray) or batch.ndim != len(inp.shape):
            raise InferenceError(f"input {inp.name!r} must be a {len(inp.shape)}-d array like {list(inp.shape)}")
        fixed = [(i, d) for i, d in enumerate(inp.shape) if d >= 0 and batch.shape[i] != d]
        if fixed:
            raise InferenceError(f"input {inp.name!r} must have shape {list(inp.shape)}, got {list(batch.shape)}")
        if batch.dtype != inp.dtype:  # never cast silently: a float tensor is no uint8 frame, nor the reverse
            raise InferenceError(
                f"input {inp.name!r} must be {inp.dtype} (the engine's tensor dtype), got {batch.dtype}"
            )
        with self._lock:
            self._ctx.push()
            try:
                return self._run_locked(np.ascontiguousarray(batch))
            except InferenceError:
                raise
            except Exception as e:  # noqa: BLE001 - wrap TensorRT/CUDA errors at the edge
                raise InferenceError(f"TensorRT failed on {self.source} with input {list(batch.shape)}: {e}") from e
            finally:
                self._ctx.pop()

    def _run_locked(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        cuda, inp = self._cuda, self._input
        if not self._context.set_input_shape(inp.name, tuple(batch.shape)):
            raise InferenceError(f"input shape {list(batch.shape)} is outside the engine's optimization profile")
        self._ensure(inp, tuple(batch.shape))
        np.copyto(inp.host, batch)
        cuda.memcpy_htod_async(inp.device, inp.host, self._stream)
        outs = [b for b in self._bindings if not b.is_input]
        for b in outs:
            self._ensure(b, tuple(int(d) for d in self._context.get_tensor_shape(b.name)))
        if not self._context.execute_async_v3(stream_handle=self._stream.handle):
            raise InferenceError(f"TensorRT execute_async_v3 failed on {self.source}")
        for b in outs:
            cuda.memcpy_dtoh_async(b.host, b.device, self._stream)
        self._stream.synchronize()
        return {b.name: np.array(b.host, copy=True) for b in outs}

    def close(self) -> None:
        """Free the context, engine and buffers (idempotent)."""
        with self._lock:
            for b in getattr(self, "_bindings", []):
                b.device = b.host = None
            self._context = None
            self._engine = None
            ctx, self._ctx = getattr(self, "_ctx", None), None
        if ctx is not None:
            ctx.detach()

    def __repr__(self) -> str:
        return f"TrtRuntime({self.source!r})"
