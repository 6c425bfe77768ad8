"""torch → ONNX export, validation, optional simplification and the parity check.

The export uses the TorchScript-based exporter (``dynamo=False``: it needs
no extra packages and is byte-for-byte deterministic for the same weights),
opset >= 17, named inputs/outputs and a dynamic batch dimension where the
model allows it (checked by running a batch of 2 in ONNX Runtime, else the
batch is fixed at 1). The model is then checked with ``onnx.checker`` and
shape inference. :func:`check_parity` compares ONNX Runtime FP32 with torch
on real preprocessed samples.

This module does not quantize (see :mod:`optimize.quantize`).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from models.bundle import InputSpec, Task
from models.runtime.errors import ModelRuntimeError
from models.runtime.onnxrt import OrtOptions, OrtRuntime
from optimize.errors import ExportError, ParityError

__all__ = [
    "OUTPUT_NAMES",
    "ExportResult",
    "ParityReport",
    "export_onnx",
    "torch_outputs",
    "check_parity",
    "require_parity",
    "simplify_onnx",
]

log = logging.getLogger(__name__)

OUTPUT_NAMES: dict[Task, tuple[str, ...]] = {
    Task.CLASSIFICATION: ("logits",),
    Task.DETECTION: ("boxes", "scores"),
    Task.SEGMENTATION: ("mask_logits",),
}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    dynamic_batch: bool
    opset: int


@dataclass(frozen=True)
class ParityReport:
    """ONNX Runtime vs torch on ``samples`` inputs, per output tensor."""

    samples: int
    max_abs: dict[str, float]
    cosine: dict[str, float]
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {"samples": self.samples, "max_abs": self.max_abs, "cosine": self.cosine, "ok": self.ok}


def _export_bytes(model: nn.Module, spec: InputSpec, names: tuple[str, ...], opset: int, dynamic: bool) -> bytes:
    dummy = (
        torch.zeros(1, 3, spec.height, spec.width)
        if spec.layout.value == "NCHW"
        else torch.zeros(1, spec.height, spec.width, 3)
    )
    axes = {n: {0: "batch"} for n in (spec.name, *names)} if dynamic else None
    with tempfile.TemporaryDirectory(prefix="edgefleet-export-") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[spec.name],
            output_names=list(names),
            opset_version=opset,
            dynamic_axes=axes,
            do_constant_folding=True,
            dynamo=False,
        )
        return path.read_bytes()


def _finish(data: bytes, path: Path) -> None:
    """Check, infer shapes and save deterministically."""
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.producer_name = "edgefleet"
    path.write_bytes(model.SerializeToString(deterministic=True))


def export_onnx(model: nn.Module, spec: InputSpec, path: Path, *, task: Task, opset: int = 17) -> ExportResult:
    """Export ``model`` (eval mode) to ``path``. Raises :class:`ExportError`."""
    names = OUTPUT_NAMES[task]
    model = model.eval()
    want_dynamic = spec.shape[0] is None
    for dynamic in (True, False) if want_dynamic else (False,):
        try:
            data = _export_bytes(model, spec, names, opset, dynamic)
            _finish(data, path)
        except Exception as e:  # noqa: BLE001 - torch/onnx raise many unrelated types
            if dynamic:
                log.info("dynamic-batch export failed (%s); retrying with batch 1", e)
                continue
            raise ExportError(f"exporting {type(model).__name__} to ONNX failed: {e}") from e
        if not dynamic or _runs_batch(path, spec):
            return ExportResult(path, dynamic, opset)
        log.info("the model does not run with a dynamic batch in ONNX Runtime; fixing batch at 1")
    raise ExportError(f"exporting {type(model).__name__} to ONNX failed with dynamic and static batch")


def _runs_batch(path: Path, spec: InputSpec) -> bool:
    shape = (2, 3, spec.height, spec.width) if spec.layout.value == "NCHW" else (2, spec.height, spec.width, 3)
    try:
        OrtRuntime(path, OrtOptions(providers=("CPUExecutionProvider",), allow_spinning=False)).run(
            np.zeros(shape, np.float32)
        )
    except ModelRuntimeError:
        return False
    return True


def torch_outputs(
    model: nn.Module, inputs: np.ndarray, names: tuple[str, ...], *, batch_size: int = 16
) -> dict[str, np.ndarray]:
    """Run torch on ``inputs`` in batches; outputs by ONNX name."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], batch_size):
            out = model(torch.from_numpy(inputs[start : start + batch_size]))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            if len(outs) != len(names):
                raise ExportError(f"the model returned {len(outs)} outputs, expected {list(names)}")
            for n, t in zip(names, outs, strict=True):
                parts[n].append(t.detach().float().numpy())
    return {n: np.concatenate(v) for n, v in parts.items()}


def check_parity(
    onnx_path: Path,
    reference: dict[str, np.ndarray],
    inputs: np.ndarray,
    *,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    min_cosine: float = 0.9999,
    batch_size: int = 16,
) -> ParityReport:
    """Compare ONNX Runtime (FP32, CPU) with ``reference`` (torch) outputs on ``inputs``."""
    rt = OrtRuntime(onnx_path, OrtOptions(providers=("CPUExecutionProvider",), allow_spinning=False))
    static = isinstance(rt.input_shape[0], int)
    step = 1 if static else batch_size
    got: dict[str, list[np.ndarray]] = {}
    for start in range(0, inputs.shape[0], step):
        for k, v in rt.run(inputs[start : start + step]).items():
            got.setdefault(k, []).append(v)
    rt.close()
    max_abs, cosine, bad = {}, {}, []
    for name, ref in reference.items():
        out = np.concatenate(got[name]).astype(np.float64)
        r = ref.astype(np.float64)
        diff = np.abs(out - r)
        max_abs[name] = float(diff.max(initial=0.0))
        denom = float(np.linalg.norm(out) * np.linalg.norm(r))
        cosine[name] = float(np.dot(out.ravel(), r.ravel()) / denom) if denom > 0 else 1.0
        excess = float((diff - rtol * np.abs(r)).max(initial=0.0))
        if excess > atol or cosine[name] < min_cosine or not np.all(np.isfinite(out)):
            bad.append(
                f"{name}: max |onnx - torch| {max_abs[name]:.3g} (tolerance {atol:g} + {rtol:g}*|torch|), "
                f"cosine {cosine[name]:.6f} (min {min_cosine})"
            )
    detail = "; ".join(bad) if bad else "ok"
    return ParityReport(int(inputs.shape[0]), max_abs, cosine, not bad, detail)


def require_parity(report: ParityReport, what: str) -> None:
    """Raise :class:`ParityError` with the report's numbers when parity failed."""
    if not report.ok:
        raise ParityError(f"{what} does not match torch on {report.samples} samples: {report.detail}")


def simplify_onnx(src: Path, dst: Path) -> bool:
    """onnxslim-simplify ``src`` into ``dst``; False (and nothing written) when it fails."""
    try:
        import onnxslim

        model = onnxslim.slim(onnx.load(str(src)))
        if model is None:
            return False
        onnx.checker.check_model(model)
        dst.write_bytes(model.SerializeToString(deterministic=True))
    except Exception as e:  # noqa: BLE001 - a failed simplification is not an error: keep the original
        log.info("onnxslim could not simplify %s: %s", src.name, e)
        dst.unlink(missing_ok=True)
        return False
    return True
