"""INT8 (ONNX Runtime static quantization, QDQ) and FP16 variants of an FP32 ONNX model.

Calibration reads the very inputs the device will see: samples of the
training data preprocessed by :class:`models.preprocess.Preprocessor`
(:mod:`optimize.data`), behind ONNX Runtime's ``CalibrationDataReader``.

Two INT8 flavours:

- ``cpu``: uint8 asymmetric activations, int8 symmetric per-channel weights
  (ONNX Runtime's fast U8S8 kernels on x86/ARM CPUs);
- ``tensorrt``: int8 *symmetric* activations and weights, per-channel weights,
  float biases, Q/DQ only on the inputs of Conv/Gemm/MatMul — the explicit
  quantization TensorRT fuses into INT8 kernels.

:func:`search_int8` tries every calibration method and keeps the most
accurate; when the accuracy drop is still over the limit it keeps the most
sensitive nodes in float (first and last layers, then by measured
sensitivity) and retries before giving up. Accuracy is measured by a
callable passed in, so this module holds no metric code.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from models.runtime.errors import ModelRuntimeError
from optimize.config import CalibMethod
from optimize.errors import QuantizationError

__all__ = [
    "Int8Flavor",
    "QuantSettings",
    "Int8Attempt",
    "Int8Result",
    "make_calibration_reader",
    "quantize_int8",
    "quantizable_nodes",
    "node_sensitivity",
    "search_int8",
    "convert_fp16",
]

log = logging.getLogger(__name__)
_WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


class Int8Flavor(str, Enum):
    CPU = "cpu"
    TENSORRT = "tensorrt"


@dataclass(frozen=True)
class QuantSettings:
    method: CalibMethod = CalibMethod.MINMAX
    flavor: Int8Flavor = Int8Flavor.CPU
    exclude: tuple[str, ...] = ()  # node names kept in float
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights for CPUs without VNNI (avoids vpmaddubsw saturation)
    percentile: float = 99.999  # CalibMethod.PERCENTILE

    def describe(self) -> dict[str, Any]:
        return {
            "calibration": self.method.value,
            "flavor": self.flavor.value,
            "activations": "int8 symmetric" if self.flavor is Int8Flavor.TENSORRT else "uint8 asymmetric",
            "weights": "int8 symmetric " + ("per-channel" if self.per_channel else "per-tensor"),
            "reduce_range": self.reduce_range,
            "excluded_nodes": list(self.exclude),
            "format": "QDQ",
        }


@dataclass(frozen=True)
class Int8Attempt:
    settings: QuantSettings
    accuracy: float  # fraction
    path: Path


@dataclass(frozen=True)
class Int8Result:
    best: Int8Attempt
    attempts: tuple[Int8Attempt, ...] = field(default=())
    within_limit: bool = True

    def details(self, reference: float) -> dict[str, Any]:
        return {
            **self.best.settings.describe(),
            "tried": [
                {
                    "calibration": a.settings.method.value,
                    "excluded": len(a.settings.exclude),
                    "accuracy": round(a.accuracy, 6),
                    "delta_points": round((a.accuracy - reference) * 100, 4),
                }
                for a in self.attempts
            ],
        }


def make_calibration_reader(inputs: np.ndarray, input_name: str, *, batch_size: int = 1) -> Any:
    """An ONNX Runtime ``CalibrationDataReader`` yielding ``batch_size`` preprocessed samples at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= inputs.shape[0]:
                return None
            start, self.i = self.i, self.i + batch_size
            return {input_name: inputs[start : self.i]}

        def rewind(self) -> None:
            self.i = 0

        def __len__(self) -> int:
            return -(-int(inputs.shape[0]) // batch_size)

    return _Reader()


def _calib_batch(n: int, largest: int = 16) -> int:
    """The largest batch <= ``largest`` dividing ``n``: the histogram calibrators need equal batches."""
    return max(d for d in range(1, min(largest, max(n, 1)) + 1) if n % d == 0)


def _graph_input(path: Path) -> tuple[str, bool]:
    """(input name, whether its batch dimension is dynamic)."""
    inp = onnx.load(str(path), load_external_data=False).graph.input[0]
    dim0 = inp.type.tensor_type.shape.dim[0]
    return str(inp.name), not dim0.HasField("dim_value")


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer prints progress to stdout and warns on the root logger: keep
    stdout clean for the CLI's table and send that chatter to this module's debug log."""
    root = logging.getLogger()
    level = root.level
    buf = io.StringIO()
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        root.setLevel(level)
        if buf.getvalue().strip():
            log.debug("quantizer: %s", buf.getvalue().strip())


def prepare(fp32: Path, out: Path) -> Path:
    """ONNX Runtime's recommended pre-processing (graph optimisation + shape inference)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet_quantizer():
            quant_pre_process(str(fp32), str(out), skip_symbolic_shape=True)
    except Exception as e:  # noqa: BLE001 - ORT raises untyped errors
        raise QuantizationError(f"pre-processing {fp32.name} for quantization failed: {e}") from e
    return out


def quantize_int8(
    fp32: Path, out: Path, inputs: np.ndarray, settings: QuantSettings, *, cache: Path | None = None
) -> Path:
    """Statically quantize ``fp32`` to a QDQ model at ``out``. Raises :class:`QuantizationError`.

    ``cache`` (a JSON file) keeps the calibrated tensor ranges: the first call
    computes and saves them, later calls with the same model and method (the
    other flavour, retries with excluded nodes) skip calibration.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        CalibMethod.MINMAX: CalibrationMethod.MinMax,
        CalibMethod.ENTROPY: CalibrationMethod.Entropy,
        CalibMethod.PERCENTILE: CalibrationMethod.Percentile,
    }
    trt = settings.flavor is Int8Flavor.TENSORRT
    extra: dict[str, Any] = {
        "WeightSymmetric": True,
        "ActivationSymmetric": trt,
        "CalibPercentile": settings.percentile,
    }
    if trt:
        extra.update({"QuantizeBias": False, "DedicatedQDQPair": False})
    name, dynamic = _graph_input(fp32)
    try:
        with _quiet_quantizer():
            quantize_static(
                str(fp32),
                str(out),
                make_calibration_reader(inputs, name, batch_size=_calib_batch(inputs.shape[0]) if dynamic else 1),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(_WEIGHTED_OPS) if trt else None,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range and not trt,
                activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(settings.exclude),
                calibrate_method=methods[settings.method],
                extra_options=extra,
                calibration_cache_path=None if cache is None else str(cache),
            )
        model = onnx.load(str(out))
        onnx.checker.check_model(model)
        out.write_bytes(model.SerializeToString(deterministic=True))
    except Exception as e:  # noqa: BLE001 - ORT quantization raises many untyped errors
        raise QuantizationError(f"INT8 quantization of {fp32.name} ({settings.method.value}) failed: {e}") from e
    return out


def quantizable_nodes(path: Path) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes, in graph (topological) order."""
    graph = onnx.load(str(path)).graph
    return [n.name for n in graph.node if n.op_type in _WEIGHTED_OPS and n.name]


def _with_outputs(path: Path, names: Sequence[str]) -> bytes:
    model = onnx.load(str(path))
    existing = {o.name for o in model.graph.output}
    for n in names:
        if n not in existing:
            model.graph.output.append(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    return bytes(model.SerializeToString())


def node_sensitivity(fp32: Path, int8: Path, inputs: np.ndarray) -> dict[str, float]:
    """Error each weighted node adds: relative L2 error of its output minus that of its input.

    Both models keep the float tensor names of the original graph, so the
    same intermediate tensors are read from each and compared.
    """
    from models.runtime.onnxrt import OrtOptions, OrtRuntime

    graph = onnx.load(str(fp32)).graph
    nodes = [n for n in graph.node if n.op_type in _WEIGHTED_OPS and n.name]
    in_int8 = {t for n in onnx.load(str(int8)).graph.node for t in n.output}
    tensors = sorted({t for n in nodes for t in (n.input[0], n.output[0])} & in_int8)
    opts = OrtOptions(providers=("CPUExecutionProvider",), allow_spinning=False)
    try:
        ref = OrtRuntime(_with_outputs(fp32, tensors), opts)
        got = OrtRuntime(_with_outputs(int8, tensors), opts)
    except ModelRuntimeError as e:
        raise QuantizationError(f"cannot measure node sensitivity of {int8.name}: {e}") from e
    err: dict[str, float] = {}
    try:
        for i in range(inputs.shape[0]):
            a, b = ref.run(inputs[i : i + 1]), got.run(inputs[i : i + 1])
            for t in tensors:
                if t in a and t in b:
                    num = float(np.linalg.norm(a[t] - b[t]))
                    err[t] = err.get(t, 0.0) + num / (float(np.linalg.norm(a[t])) + 1e-12)
    finally:
        ref.close()
        got.close()
    return {n.name: err.get(n.output[0], 0.0) - err.get(n.input[0], 0.0) for n in nodes}


def _exclusions(fp32: Path, int8: Path, inputs: np.ndarray, round_: int) -> tuple[str, ...]:
    nodes = quantizable_nodes(fp32)
    if not nodes:
        return ()
    edge = [nodes[0], nodes[-1]]
    if round_ == 1:
        return tuple(dict.fromkeys(edge))
    sens = node_sensitivity(fp32, int8, inputs)
    ranked = sorted((n for n in nodes if n not in edge), key=lambda n: (-sens.get(n, 0.0), n))
    k = 2 ** (round_ - 1)
    return tuple(dict.fromkeys(edge + ranked[:k]))


def search_int8(
    fp32: Path,
    workdir: Path,
    calib: np.ndarray,
    evaluate: Callable[[Path], float],
    *,
    reference: float,
    max_drop_points: float,
    methods: Sequence[CalibMethod],
    flavor: Int8Flavor,
    max_rounds: int = 3,
    reduce_range: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Int8Result:
    """Find the most accurate INT8 model within ``max_drop_points`` of ``reference``.

    Tries every method; if the best is over the limit, retries that method
    with more nodes excluded (``max_rounds`` times). Returns the best attempt
    and ``within_limit``; raises :class:`QuantizationError` only when no
    attempt could be produced at all.
    """
    attempts: list[Int8Attempt] = []
    prepared = workdir / "prepared.onnx"
    fp32 = prepared if prepared.is_file() else prepare(fp32, prepared)

    def attempt(settings: QuantSettings, tag: str) -> Int8Attempt:
        path = workdir / f"int8-{flavor.value}-{tag}.onnx"
        quantize_int8(fp32, path, calib, settings, cache=workdir / f"ranges-{settings.method.value}.json")
        try:
            acc = evaluate(path)
        except ModelRuntimeError as e:
            raise QuantizationError(f"the INT8 model {path.name} does not run: {e}") from e
        if progress:
            progress(f"int8 {flavor.value} {tag}: accuracy {acc:.4f}")
        a = Int8Attempt(settings, acc, path)
        attempts.append(a)
        return a

    errors = []
    for m in methods:
        try:
            attempt(QuantSettings(method=m, flavor=flavor, reduce_range=reduce_range), m.value)
        except QuantizationError as e:
            errors.append(str(e))
            log.warning("%s", e)
    if not attempts:
        raise QuantizationError("every calibration method failed: " + " | ".join(errors))

    def drop(a: Int8Attempt) -> float:
        return (reference - a.accuracy) * 100

    best = max(attempts, key=lambda a: (a.accuracy, -methods.index(a.settings.method)))
    for round_ in range(1, max_rounds + 1):
        if drop(best) <= max_drop_points or math.isnan(best.accuracy):
            break
        try:
            exclude = _exclusions(fp32, best.path, calib[: min(16, calib.shape[0])], round_)
            settings = QuantSettings(
                method=best.settings.method,
                flavor=flavor,
                exclude=exclude,
                reduce_range=reduce_range,
            )
            a = attempt(settings, f"{best.settings.method.value}-x{len(exclude)}")
        except QuantizationError as e:
            log.warning("retry with excluded nodes failed: %s", e)
            break
        if a.accuracy > best.accuracy:
            best = a
    return Int8Result(best, tuple(attempts), drop(best) <= max_drop_points)


def convert_fp16(fp32: Path, out: Path) -> Path:
    """FP16 weights and compute with float32 inputs/outputs (for GPU targets)."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
        _toposort(model.graph)
        onnx.checker.check_model(model)
        out.write_bytes(model.SerializeToString(deterministic=True))
    except Exception as e:  # noqa: BLE001 - converter raises untyped errors
        raise QuantizationError(f"FP16 conversion of {fp32.name} failed: {e}") from e
    return out


def _toposort(graph: onnx.GraphProto) -> None:
    """Order nodes so each comes after its inputs' producers (the FP16 converter appends its
    input casts at the end of the node list)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise QuantizationError(f"graph has a cycle or a dangling input at node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
