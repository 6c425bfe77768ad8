"""In-memory stand-ins for ``tensorrt`` (10.x API) and ``pycuda.driver``.

TensorRT and CUDA cannot run on the test host, so these fakes implement the
slice of their APIs that :mod:`models.runtime.tensorrt` and
:mod:`optimize.tensorrt` call, with the same names and calling conventions,
and real behaviour: device memory is a dict of byte buffers keyed by address,
copies move bytes, and an "engine" computes ``logits = mean_hw(input) @ W``
(W stored in the serialized engine), so results can be checked numerically.
Install them with :func:`install` (a context manager over ``sys.modules``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import types
from collections.abc import Iterator
from enum import IntEnum
from typing import Any

import numpy as np

MAGIC = b"FAKETRT1"


def serialize_engine(weights: np.ndarray, *, input_name: str = "input", output_name: str = "logits",
                     hw: int = 8, max_batch: int = 8) -> bytes:
    meta = {"input": input_name, "output": output_name, "hw": hw, "max_batch": max_batch,
            "weights": np.asarray(weights, np.float32).tolist()}
    return MAGIC + json.dumps(meta).encode()


# ----------------------------------------------------------------------------- pycuda.driver


class _Memory:
    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}
        self.next = 0x1000
        self.freed = 0

    def alloc(self, nbytes: int) -> DeviceAllocation:
        addr = self.next
        self.next += nbytes + 256
        self.blocks[addr] = bytearray(nbytes)
        return DeviceAllocation(addr)


MEMORY = _Memory()


class DeviceAllocation:
    def __init__(self, addr: int) -> None:
        self.addr = addr

    def __int__(self) -> int:
        return self.addr


class Stream:
    handle = 0xC0FFEE

    def synchronize(self) -> None:
        return None


class _Context:
    def __init__(self) -> None:
        self.depth = 0
        self.detached = False

    def push(self) -> None:
        self.depth += 1

    def pop(self) -> None:
        self.depth -= 1

    def detach(self) -> None:
        self.detached = True


class Device:
    contexts: list[_Context] = []

    def __init__(self, ordinal: int) -> None:
        if ordinal != 0:
            raise RuntimeError(f"cuDeviceGet failed: invalid device ordinal {ordinal}")

    def retain_primary_context(self) -> _Context:
        ctx = _Context()
        Device.contexts.append(ctx)
        return ctx

    def compute_capability(self) -> tuple[int, int]:
        return (8, 7)

    def name(self) -> str:
        return "Fake Orin"


def _make_pycuda() -> tuple[types.ModuleType, types.ModuleType]:
    driver = types.ModuleType("pycuda.driver")
    driver.init = lambda: None  # type: ignore[attr-defined]
    driver.Device = Device  # type: ignore[attr-defined]
    driver.Stream = Stream  # type: ignore[attr-defined]
    driver.mem_alloc = MEMORY.alloc  # type: ignore[attr-defined]
    driver.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)  # type: ignore[attr-defined]

    def htod(dev: DeviceAllocation, host: np.ndarray, stream: Stream | None = None) -> None:
        data = np.ascontiguousarray(host).tobytes()
        MEMORY.blocks[int(dev)][: len(data)] = data

    def dtoh(host: np.ndarray, dev: DeviceAllocation, stream: Stream | None = None) -> None:
        n = host.nbytes
        host[...] = np.frombuffer(bytes(MEMORY.blocks[int(dev)][:n]), dtype=host.dtype).reshape(host.shape)

    driver.memcpy_htod_async = htod  # type: ignore[attr-defined]
    driver.memcpy_dtoh_async = dtoh  # type: ignore[attr-defined]
    driver.get_version = lambda: (12, 6, 0)  # type: ignore[attr-defined]
    pkg = types.ModuleType("pycuda")
    pkg.driver = driver  # type: ignore[attr-defined]
    return pkg, driver


# ----------------------------------------------------------------------------- tensorrt runtime


class TensorIOMode(IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2


def nptype(dt: DataType) -> type:
    return {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8}[dt]


class Logger:
    WARNING = 2
    INFO = 3
    ERROR = 1

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


class ICudaEngine:
    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.weights = np.asarray(meta["weights"], np.float32)
        self.num_io_tensors = 2

    def get_tensor_name(self, i: int) -> str:
        return str(self.meta["input"] if i == 0 else self.meta["output"])

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name == self.meta["input"] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.FLOAT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        hw = self.meta["hw"]
        if name == self.meta["input"]:
            return (-1, self.weights.shape[0], hw, hw)
        return (-1, self.weights.shape[1])

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        c, hw = self.weights.shape[0], self.meta["hw"]
        return ((1, c, hw, hw), (1, c, hw, hw), (self.meta["max_batch"], c, hw, hw))

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executions = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if shape[0] < 1 or shape[0] > self.engine.meta["max_batch"]:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        batch = self.shapes[self.engine.meta["input"]][0]
        shape = self.engine.get_tensor_shape(name)
        return (batch, *shape[1:])

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        meta = self.engine.meta
        shape = self.shapes[meta["input"]]
        n = int(np.prod(shape)) * 4
        x = np.frombuffer(bytes(MEMORY.blocks[self.addresses[meta["input"]]][:n]), np.float32).reshape(shape)
        y = x.mean(axis=(2, 3)) @ self.engine.weights
        out = np.ascontiguousarray(y, np.float32).tobytes()
        MEMORY.blocks[self.addresses[meta["output"]]][: len(out)] = out
        self.executions += 1
        return True


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> ICudaEngine | None:
        if not bytes(data).startswith(MAGIC):
            return None  # real TensorRT logs an error and returns None
        return ICudaEngine(json.loads(bytes(data)[len(MAGIC):]))


def _make_tensorrt(version: str) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]
    for obj in (Logger, Runtime, TensorIOMode, DataType, nptype):
        setattr(trt, obj.__name__, obj)
    from tests.models import fake_tensorrt_builder

    fake_tensorrt_builder.attach(trt)
    return trt


@contextlib.contextmanager
def install(version: str = "10.3.0") -> Iterator[types.ModuleType]:
    """Put fake ``tensorrt``, ``pycuda`` and ``pycuda.driver`` into ``sys.modules``."""
    names = ("tensorrt", "pycuda", "pycuda.driver")
    saved = {n: sys.modules.get(n) for n in names}
    trt = _make_tensorrt(version)
    pkg, driver = _make_pycuda()
    sys.modules.update({"tensorrt": trt, "pycuda": pkg, "pycuda.driver": driver})
    try:
        yield trt
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
