"""Stand-ins for ``tensorrt`` (the 10.x Python API) and ``pycuda.driver``, backed by ONNX Runtime.

TensorRT and CUDA cannot run on the test host, so these fakes implement the
slice of their APIs that :mod:`models.runtime.tensorrt`,
:mod:`models.runtime.trt_build` and :mod:`optimize.tensorrt` call, with the
same names and calling conventions, and real behaviour:

- device memory is a dict of byte buffers keyed by address; copies move bytes;
- a serialized engine ("plan") holds a header (TensorRT version, GPU, I/O
  tensors, optimization profile, builder flags) and the ONNX it was built
  from; ``execute_async_v3`` reads the input from device memory, runs that
  ONNX with ONNX Runtime and writes the outputs back, so results are real;
- like TensorRT, ``deserialize_cuda_engine`` returns None (and logs an error)
  for a plan built by another TensorRT version or for another GPU, and
  ``set_input_shape`` refuses shapes outside the profile.

The builder half is :mod:`tests.models.fake_tensorrt_builder`. Install the
fakes in this process with :func:`install` (a context manager over
``sys.modules``); agent subprocesses get them from ``fake_trt_site/`` on
their ``PYTHONPATH`` (:func:`subprocess_env`).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
import types
from collections.abc import Iterator
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import onnx

MAGIC = b"FAKETRT2"
SITE = Path(__file__).resolve().parent / "fake_trt_site"
ENV_VERSION = "EDGEFLEET_FAKE_TENSORRT_VERSION"  # the version the fake reports (default 10.3.0)
ENV_FAIL = "EDGEFLEET_FAKE_TENSORRT_FAIL"  # "1": every build fails, as on a model TensorRT cannot compile
ENV_LOG = "EDGEFLEET_FAKE_TENSORRT_LOG"  # a file the fake appends one JSON line to per build and load


class _State:
    """What the installed fake reports, and what it did."""

    version = "10.3.0"
    gpu_name = "Orin (nvgpu)"
    compute_capability = (8, 7)
    fail_builds = False
    log_path: Path | None = None
    builds: list[dict[str, Any]] = []  # noqa: RUF012 - process-wide record, reset by install()
    loads: list[dict[str, Any]] = []  # noqa: RUF012

    @classmethod
    def record(cls, kind: str, **fields: Any) -> None:
        entry = {"event": kind, **fields}
        (cls.builds if kind == "build" else cls.loads).append(entry)
        if cls.log_path is not None:
            with open(cls.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")


STATE = _State


def read_log(path: Path) -> list[dict[str, Any]]:
    """The events a fake in another process appended to ``path`` (see :data:`ENV_LOG`)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def subprocess_env(*, version: str = "10.3.0", fail: bool = False, log: Path | None = None) -> dict[str, str]:
    """Environment entries that make a Python subprocess import these fakes as tensorrt and pycuda."""
    root = str(Path(__file__).resolve().parents[2])
    env = {"PYTHONPATH": os.pathsep.join([str(SITE), root]), ENV_VERSION: version, ENV_FAIL: "1" if fail else "0"}
    if log is not None:
        env[ENV_LOG] = str(log)
    return env


# ----------------------------------------------------------------------------- the plan format


def serialize_engine(onnx_bytes: bytes, header: dict[str, Any]) -> bytes:
    """A plan: MAGIC, header length, JSON header, the ONNX bytes."""
    head = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + onnx_bytes


def parse_engine(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    data = bytes(data)
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        return None
    (n,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    return json.loads(data[start : start + n]), data[start + n :]


def onnx_tensors(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of a graph as plan header entries (name, dtype, shape with -1 for dynamic dims)."""
    init = {t.name for t in model.graph.initializer}

    def entry(v: Any) -> dict[str, Any]:
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "dtype": int(_DTYPES[v.type.tensor_type.elem_type]), "shape": dims}

    return ([entry(v) for v in model.graph.input if v.name not in init], [entry(v) for v in model.graph.output])


# ----------------------------------------------------------------------------- pycuda.driver


class _Memory:
    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}
        self.next = 0x1000

    def alloc(self, nbytes: int) -> DeviceAllocation:
        addr = self.next
        self.next += nbytes + 256
        self.blocks[addr] = bytearray(nbytes)
        return DeviceAllocation(addr)

    def read(self, addr: int, nbytes: int) -> bytes:
        block = self.blocks[addr]
        if len(block) < nbytes:
            raise RuntimeError(f"illegal memory access: read {nbytes} bytes from a {len(block)}-byte buffer")
        return bytes(block[:nbytes])

    def write(self, addr: int, data: bytes) -> None:
        block = self.blocks[addr]
        if len(block) < len(data):
            raise RuntimeError(f"illegal memory access: wrote {len(data)} bytes into a {len(block)}-byte buffer")
        block[: len(data)] = data


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
    contexts: list[_Context] = []  # noqa: RUF012 - every context handed out, to check they are released

    def __init__(self, ordinal: int) -> None:
        if ordinal != 0:
            raise RuntimeError(f"cuDeviceGet failed: invalid device ordinal {ordinal}")

    def retain_primary_context(self) -> _Context:
        ctx = _Context()
        Device.contexts.append(ctx)
        return ctx

    def compute_capability(self) -> tuple[int, int]:
        return STATE.compute_capability

    def name(self) -> str:
        return STATE.gpu_name


def populate_pycuda_driver(driver: types.ModuleType) -> None:
    """Fill a module object with the fake ``pycuda.driver`` API."""

    def htod(dev: DeviceAllocation, host: np.ndarray, stream: Stream | None = None) -> None:
        MEMORY.write(int(dev), np.ascontiguousarray(host).tobytes())

    def dtoh(host: np.ndarray, dev: DeviceAllocation, stream: Stream | None = None) -> None:
        raw = MEMORY.read(int(dev), host.nbytes)
        host[...] = np.frombuffer(raw, dtype=host.dtype).reshape(host.shape)

    driver.init = lambda: None  # type: ignore[attr-defined]
    driver.Device = Device  # type: ignore[attr-defined]
    driver.Stream = Stream  # type: ignore[attr-defined]
    driver.mem_alloc = MEMORY.alloc  # type: ignore[attr-defined]
    driver.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)  # type: ignore[attr-defined]
    driver.memcpy_htod_async = htod  # type: ignore[attr-defined]
    driver.memcpy_dtoh_async = dtoh  # type: ignore[attr-defined]
    driver.get_version = lambda: (12, 6, 0)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- tensorrt runtime


class TensorIOMode(IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


_DTYPES = {
    onnx.TensorProto.FLOAT: DataType.FLOAT,
    onnx.TensorProto.FLOAT16: DataType.HALF,
    onnx.TensorProto.INT8: DataType.INT8,
    onnx.TensorProto.INT32: DataType.INT32,
    onnx.TensorProto.BOOL: DataType.BOOL,
    onnx.TensorProto.UINT8: DataType.UINT8,
    onnx.TensorProto.INT64: DataType.INT64,
}
_NP = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
    DataType.INT64: np.int64,
}


def nptype(dt: DataType) -> type:
    return _NP[DataType(dt)]


class ILogger:
    """Base logger; subclasses call ``ILogger.__init__(self)`` and override ``log``."""

    class Severity(IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE

    def __init__(self) -> None:
        self.min_severity = ILogger.Severity.WARNING

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        return None


class Logger(ILogger):
    """TensorRT's stock logger: writes messages at or above ``min_severity`` to stderr."""

    def __init__(self, min_severity: ILogger.Severity = ILogger.Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = ILogger.Severity(min_severity)

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        if severity <= self.min_severity:
            print(f"[TRT] [{ILogger.Severity(severity).name[0]}] {msg}", file=sys.stderr)


class ICudaEngine:
    def __init__(self, header: dict[str, Any], onnx_bytes: bytes) -> None:
        import onnxruntime as ort

        self.header = header
        self._io = [dict(t, mode=TensorIOMode.INPUT) for t in header["inputs"]]
        self._io += [dict(t, mode=TensorIOMode.OUTPUT) for t in header["outputs"]]
        self._by_name = {t["name"]: t for t in self._io}
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self.session = ort.InferenceSession(onnx_bytes, sess_options=so, providers=["CPUExecutionProvider"])
        self.num_io_tensors = len(self._io)
        self.num_optimization_profiles = 1

    def _tensor(self, name: str) -> dict[str, Any]:
        if name not in self._by_name:
            raise RuntimeError(f"no tensor named {name!r} in this engine")
        return self._by_name[name]

    def get_tensor_name(self, index: int) -> str:
        return str(self._io[index]["name"])

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode(self._tensor(name)["mode"])

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(self._tensor(name)["dtype"])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensor(name)["shape"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        if profile_index != 0 or name not in self.header["profile"]:
            raise RuntimeError(f"no optimization profile {profile_index} for input {name!r}")
        return [tuple(s) for s in self.header["profile"][name]]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self._out_shapes: dict[tuple[int, ...], dict[str, tuple[int, ...]]] = {}
        self.executions = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(lo) or any(not a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True)):
            return False  # TensorRT logs "... is out of the optimization profile's bounds" and refuses
        self.shapes[name] = shape
        return True

    def _input(self) -> dict[str, Any]:
        return next(t for t in self.engine._io if t["mode"] == TensorIOMode.INPUT)

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        t = self.engine._tensor(name)
        if t["mode"] == TensorIOMode.INPUT:
            return self.shapes.get(name, tuple(t["shape"]))
        inp = self._input()
        shape = self.shapes[inp["name"]]
        if shape not in self._out_shapes:  # shape inference: run the graph once on zeros of that shape
            zeros = np.zeros(shape, nptype(DataType(inp["dtype"])))
            outs = self.engine.session.run(None, {inp["name"]: zeros})
            names = [o.name for o in self.engine.session.get_outputs()]
            self._out_shapes[shape] = {n: tuple(o.shape) for n, o in zip(names, outs, strict=True)}
        return self._out_shapes[shape][name]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.engine._tensor(name)
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        inp = self._input()
        shape = self.shapes[inp["name"]]
        dtype = np.dtype(nptype(DataType(inp["dtype"])))
        raw = MEMORY.read(self.addresses[inp["name"]], int(np.prod(shape)) * dtype.itemsize)
        x = np.frombuffer(raw, dtype).reshape(shape)
        outs = self.engine.session.run(None, {inp["name"]: x})
        for o, y in zip(self.engine.session.get_outputs(), outs, strict=True):
            MEMORY.write(self.addresses[o.name], np.ascontiguousarray(y).tobytes())
        self.executions += 1
        return True


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> ICudaEngine | None:
        parsed = parse_engine(data)
        err = ILogger.Severity.ERROR
        if parsed is None:
            self.logger.log(err, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (magic tag mismatch)")
            return None
        header, onnx_bytes = parsed
        if header["tensorrt_version"] != STATE.version:
            self.logger.log(
                err,
                "IRuntime::deserializeCudaEngine: Error Code 6: The engine plan file is not "
                f"compatible with this version of TensorRT, expecting library version {STATE.version} "
                f"got {header['tensorrt_version']}",
            )
            return None
        cc = ".".join(map(str, STATE.compute_capability))
        if header["compute_capability"] != cc:
            self.logger.log(
                err,
                "IRuntime::deserializeCudaEngine: Error Code 6: The engine plan file is generated "
                f"on an incompatible device, expecting compute {cc} got compute "
                f"{header['compute_capability']}",
            )
            return None
        STATE.record("load", onnx_sha256=header.get("onnx_sha256"), tensorrt_version=STATE.version)
        return ICudaEngine(header, onnx_bytes)


def populate_tensorrt(trt: types.ModuleType) -> None:
    """Fill a module object with the fake ``tensorrt`` API (runtime and builder)."""
    trt.__version__ = STATE.version  # type: ignore[attr-defined]
    for obj in (ILogger, Logger, Runtime, TensorIOMode, DataType, nptype):
        setattr(trt, obj.__name__, obj)
    from tests.models import fake_tensorrt_builder

    fake_tensorrt_builder.attach(trt)


def configure(
    *,
    version: str = "10.3.0",
    fail_builds: bool = False,
    log_path: Path | None = None,
    gpu_name: str = "Orin (nvgpu)",
    compute_capability: tuple[int, int] = (8, 7),
) -> None:
    """Set what the fake reports and does, and forget what it did."""
    STATE.version, STATE.fail_builds, STATE.log_path = version, fail_builds, log_path
    STATE.gpu_name, STATE.compute_capability = gpu_name, compute_capability
    STATE.builds, STATE.loads = [], []


@contextlib.contextmanager
def install(
    version: str = "10.3.0",
    *,
    fail_builds: bool = False,
    gpu_name: str = "Orin (nvgpu)",
    compute_capability: tuple[int, int] = (8, 7),
) -> Iterator[types.ModuleType]:
    """Put fake ``tensorrt``, ``pycuda`` and ``pycuda.driver`` into ``sys.modules`` for the block."""
    names = ("tensorrt", "pycuda", "pycuda.driver")
    saved = {n: sys.modules.get(n) for n in names}
    configure(version=version, fail_builds=fail_builds, gpu_name=gpu_name, compute_capability=compute_capability)
    trt = types.ModuleType("tensorrt")
    populate_tensorrt(trt)
    driver = types.ModuleType("pycuda.driver")
    populate_pycuda_driver(driver)
    pkg = types.ModuleType("pycuda")
    pkg.driver = driver  # type: ignore[attr-defined]
    sys.modules.update({"tensorrt": trt, "pycuda": pkg, "pycuda.driver": driver})
    try:
        yield trt
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
