"""``edge-optimize`` end to end: checkpoint → staged bundle → atomic rename.

Steps: read checkpoint + sidecar, open and check the baselines (``--baseline``,
``--baseline-release``), rebuild the torch model, export FP32 ONNX (+ parity on
real samples, + onnxslim kept only if parity holds), INT8 for CPUs calibrated
on the training split or ``--calib-data``, TensorRT-flavoured Q/DQ INT8 and
FP16 for GPUs, the frame-form twin of each (``--input-form both``: the
preprocessing prepended to the graph, :mod:`optimize.frame_input`), TensorRT
engines when TensorRT is installed, accuracy of every
variant, latency of all of them timed interleaved, selection per hardware
class, agreement expectations against the baselines and the bundle's own
FP32, gates, manifest, report.

Everything is written into a staging directory beside ``--out`` and renamed
into place at the very end: a failure at any step leaves ``--out`` untouched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from models.bundle import (
    AgreementExpectation,
    DecoderKind,
    DecoderSpec,
    Format,
    InputForm,
    InputSpec,
    Manifest,
    OutputSpec,
    Precision,
    Provenance,
    Task,
    TensorSpec,
    sha256_file,
    write_bundle,
)
from models.datasets.spec import Dataset
from models.hardware import detect_profile, hardware_class
from optimize.baseline import Baseline, check_compatible, open_baseline, references, served_variants
from optimize.checkpoint import Checkpoint, build_torch_model, read_checkpoint
from optimize.config import InputFormChoice, OptimizeConfig
from optimize.data import FrameFolder, SampleSet, load_samples, open_split
from optimize.engines import build_engines
from optimize.errors import InputError, QuantizationError
from optimize.expect import Reference, below_floor, expectations
from optimize.export import (
    OUTPUT_NAMES,
    check_parity,
    export_onnx,
    require_parity,
    simplify_onnx,
    torch_outputs,
)
from optimize.fetch import fetch_release
from optimize.frame_input import frame_file, frame_id, write_frame_variant
from optimize.quantize import Int8Flavor, convert_fp16, search_int8
from optimize.report import report_dict, report_markdown, variant_rows
from optimize.select import choose, default_gates
from optimize.variants import REQUIREMENTS, BuiltVariant, Evaluator, host_description

__all__ = ["OptimizeResult", "optimize", "STEPS"]

log = logging.getLogger(__name__)
STEPS = (
    "checkpoint",
    "baselines",
    "samples",
    "export",
    "int8 cpu",
    "int8 tensorrt",
    "fp16",
    "tensorrt engines",
    "measure",
    "expectations",
    "select + write",
)


@dataclass(frozen=True)
class OptimizeResult:
    out: Path
    manifest: Manifest
    report: dict[str, Any]
    seconds: float


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} already exists and is not an empty directory; refusing to overwrite it")


@contextmanager
def _staging(out: Path) -> Iterator[tuple[Path, Path]]:
    """(bundle staging dir, scratch dir) beside ``out``; removed unless renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
    try:
        yield stage, work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.bar = tqdm(total=len(STEPS), desc="edge-optimize", unit="step", disable=not enabled, leave=False)

    def step(self, name: str) -> None:
        self.bar.set_postfix_str(name)
        self.bar.update(1)

    def note(self, text: str) -> None:
        log.info("%s", text)
        self.bar.set_postfix_str(text[:60])

    def close(self) -> None:
        self.bar.close()


def _output_spec(task: Task, onnx_path: Path, num_classes: int) -> OutputSpec:
    graph = onnx.load(str(onnx_path)).graph
    shapes = {
        o.name: tuple(d.dim_value if d.dim_value > 0 else None for d in o.type.tensor_type.shape.dim)
        for o in graph.output
    }
    meanings = {"logits": "logits", "boxes": "boxes_xyxy", "scores": "scores", "mask_logits": "mask_logits"}
    tensors = tuple(TensorSpec(n, shapes[n], meanings[n]) for n in OUTPUT_NAMES[task])
    kind = {
        Task.CLASSIFICATION: DecoderKind.TOPK,
        Task.DETECTION: DecoderKind.BOXES,
        Task.SEGMENTATION: DecoderKind.MASKS,
    }[task]
    return OutputSpec(tensors, DecoderSpec(kind=kind, top_k=min(5, num_classes)))


def _export(
    cfg: OptimizeConfig, ckpt: Checkpoint, stage: Path, work: Path, parity: SampleSet, pr: _Progress
) -> tuple[BuiltVariant, dict[str, Any], InputSpec]:
    model = build_torch_model(ckpt)
    names = OUTPUT_NAMES[ckpt.task]
    raw = work / "model-fp32-raw.onnx"
    res = export_onnx(model, ckpt.input_spec, raw, task=ckpt.task, opset=cfg.opset)
    ref = torch_outputs(model, parity.inputs, names)
    rep = check_parity(raw, ref, parity.inputs, atol=cfg.parity_atol, min_cosine=cfg.parity_min_cosine)
    require_parity(rep, "the exported ONNX model (ONNX Runtime FP32)")
    final, simplified = stage / "model-fp32.onnx", False
    if cfg.simplify and simplify_onnx(raw, work / "model-fp32-slim.onnx"):
        slim_rep = check_parity(
            work / "model-fp32-slim.onnx", ref, parity.inputs, atol=cfg.parity_atol, min_cosine=cfg.parity_min_cosine
        )
        if slim_rep.ok:
            rep, simplified = slim_rep, True
            shutil.copyfile(work / "model-fp32-slim.onnx", final)
        else:
            pr.note(f"onnxslim result dropped: {slim_rep.detail}")
    if not simplified:
        shutil.copyfile(raw, final)
    pr.note(f"parity ok on {rep.samples} samples: max abs {max(rep.max_abs.values()):.2e}")
    spec = (
        ckpt.input_spec
        if res.dynamic_batch
        else dataclasses.replace(ckpt.input_spec, shape=(1, *ckpt.input_spec.shape[1:]))
    )
    details = {"opset": res.opset, "dynamic_batch": res.dynamic_batch, "simplified": simplified}
    bv = BuiltVariant("onnx-fp32", final, Format.ONNX, Precision.FP32, REQUIREMENTS["onnx-fp32"], details)
    return bv, rep.to_dict(), spec


def _int8(
    cfg: OptimizeConfig,
    ev: Evaluator,
    fp32: BuiltVariant,
    calib: np.ndarray,
    stage: Path,
    work: Path,
    flavor: Int8Flavor,
    pr: _Progress,
) -> BuiltVariant | None:
    vid, file = (
        ("onnx-int8", "model-int8.onnx") if flavor is Int8Flavor.CPU else ("onnx-int8-qdq", "model-int8-qdq.onnx")
    )
    reference = fp32.score.value if fp32.score else 0.0
    try:
        result = search_int8(
            fp32.path,
            work,
            calib,
            lambda p: ev.score(p).value,
            reference=reference,
            max_drop_points=cfg.max_accuracy_drop,
            methods=cfg.calib_methods,
            flavor=flavor,
            max_rounds=cfg.max_exclusion_rounds,
            progress=pr.note,
        )
    except QuantizationError as e:
        log.warning("no %s variant: %s", vid, e)
        return None
    if not result.within_limit:
        log.warning(
            "%s dropped: best accuracy %.4f is more than %.2f points below FP32 %.4f",
            vid,
            result.best.accuracy,
            cfg.max_accuracy_drop,
            reference,
        )
    shutil.copyfile(result.best.path, stage / file)
    return BuiltVariant(vid, stage / file, Format.ONNX, Precision.INT8, REQUIREMENTS[vid], result.details(reference))


def _gpu_targets(cfg: OptimizeConfig) -> bool:
    return any(not t.startswith("cpu") for t in cfg.targets)


def _calib_source(cfg: OptimizeConfig, ckpt: Checkpoint) -> Dataset:
    """``--calib-data`` frames (opened and decoded now, so a bad directory fails first), else the train split."""
    return FrameFolder(cfg.calib_data) if cfg.calib_data is not None else open_split(ckpt.dataset, "train")


def _baselines(cfg: OptimizeConfig, ckpt: Checkpoint, work: Path) -> list[Baseline]:
    """Open, check and verify every baseline; a release is fetched through TUF into ``work``."""

    def check(manifest: Manifest, origin: str) -> None:
        check_compatible(
            manifest,
            origin=origin,
            name=cfg.name,
            version=cfg.version,
            task=ckpt.task,
            labels=ckpt.labels,
            input_spec=ckpt.input_spec,
        )

    def opened(directory: Path, origin: str) -> Baseline:
        return open_baseline(directory, origin=origin, targets=cfg.targets, check=lambda m: check(m, origin))

    out = [opened(d, f"--baseline {d}") for d in cfg.baselines]
    if cfg.baseline_release is not None:
        assert cfg.server is not None and cfg.trusted_root is not None  # OptimizeConfig checked them
        origin = f"--baseline-release {cfg.baseline_release}"

        def wanted(manifest: Manifest) -> tuple[str, ...]:
            check(manifest, origin)  # before a byte of a model is downloaded
            return served_variants(manifest, cfg.targets)

        dest = fetch_release(
            cfg.baseline_release,
            server=cfg.server,
            trusted_root=cfg.trusted_root,
            dest=work / "baseline-release",
            variant_ids=wanted,
        )
        out.append(opened(dest, origin))
    return out


def _build_variants(
    cfg: OptimizeConfig, ckpt: Checkpoint, calib_src: Dataset, stage: Path, work: Path, pr: _Progress
) -> tuple[list[BuiltVariant], dict[str, Any], InputSpec, Evaluator]:
    val = open_split(ckpt.dataset, "val")
    evalset = load_samples(val, cfg.eval_samples, ckpt.input_spec)
    calibset = load_samples(calib_src, cfg.calib_samples, ckpt.input_spec)
    calib = calibset.inputs
    pr.step("samples")
    fp32, parity, spec = _export(cfg, ckpt, stage, work, evalset.head(cfg.parity_samples), pr)
    pr.step("export")
    ev = Evaluator(
        ckpt.task,
        _output_spec(ckpt.task, fp32.path, ckpt.num_classes),
        evalset,
        num_classes=ckpt.num_classes,
        threads=cfg.threads,
        bench=cfg.bench,
        calibset=calibset,
        input_spec=ckpt.input_spec,
    )
    ev.reference_outputs = ev.outputs(fp32.path)
    fp32.score = ev.score_of(ev.reference_outputs)
    built = [fp32]
    cpu, gpu = any(t.startswith("cpu") for t in cfg.targets), _gpu_targets(cfg)
    if cfg.int8 and cpu and (v := _int8(cfg, ev, fp32, calib, stage, work, Int8Flavor.CPU, pr)):
        built.append(v)
    pr.step("int8 cpu")
    if cfg.int8 and gpu and (v := _int8(cfg, ev, fp32, calib, stage, work, Int8Flavor.TENSORRT, pr)):
        built.append(v)
    pr.step("int8 tensorrt")
    if cfg.fp16 and gpu:
        path = convert_fp16(fp32.path, stage / "model-fp16.onnx")
        built.append(
            BuiltVariant("onnx-fp16", path, Format.ONNX, Precision.FP16, REQUIREMENTS["onnx-fp16"], {"io": "float32"})
        )
    pr.step("fp16")
    if cfg.input_form is InputFormChoice.BOTH:
        built += _frame_twins(built, spec, stage, pr)
    built += build_engines(cfg, built, spec, stage, work, pr.note)
    pr.step("tensorrt engines")
    return built, parity, spec, ev


def _frame_twins(built: list[BuiltVariant], spec: InputSpec, stage: Path, pr: _Progress) -> list[BuiltVariant]:
    """The frame-form twin of every ONNX variant: the same file with the preprocessing prepended."""
    out = []
    for b in built:
        path = write_frame_variant(b.path, stage / frame_file(b.path.name), spec)
        details = {**b.details, "preprocessing": "in graph", "tensor_form": b.id}
        out.append(
            BuiltVariant(
                frame_id(b.id),
                path,
                b.format,
                b.precision,
                b.requires,
                details,
                input_form=InputForm.FRAME,
                twin=b.id,
            )
        )
    pr.note(f"frame-form twins: {', '.join(v.id for v in out)}")
    return out


def _measure(ev: Evaluator, built: list[BuiltVariant], pr: _Progress) -> None:
    """Accuracy and decoded frames of every ONNX variant, then all of them timed interleaved
    (engines need their GPU: the device times them)."""
    runnable = []
    for b in built:
        if b.format is Format.ONNX:
            pr.note(f"evaluating {b.id}")
            if ev.evaluate(b):
                runnable.append(b)
    pr.note(f"timing {', '.join(b.id for b in runnable)} interleaved, one thread each")
    ev.time_interleaved(runnable)


def _expectations(
    cfg: OptimizeConfig,
    task: Task,
    built: list[BuiltVariant],
    baselines: list[Baseline],
    ev: Evaluator,
    *,
    labels: Sequence[str],
) -> tuple[AgreementExpectation, ...]:
    """Each variant against the bundle's own FP32 and against every variant the baselines serve."""
    fp32 = built[0]
    assert fp32.frames is not None and ev.calibset is not None  # FP32 always runs: parity checked it
    for b in built:
        if b.frames is None:
            log.info("no agreement expectations for %s: ONNX Runtime (CPU) cannot run it here", b.id)
    refs = [Reference(f"{cfg.name}@{cfg.version}", fp32.id, sha256_file(fp32.path), fp32.frames)]
    for bl in baselines:
        refs += references(bl, ev.evalset, ev.calibset, threads=cfg.threads)
    return expectations(task, {b.id: b.frames for b in built if b.frames is not None}, refs, labels=labels)


def _provenance(ckpt: Checkpoint, created_at: str) -> Provenance:
    side = ckpt.sidecar
    ds = dict(ckpt.dataset)
    return Provenance(
        training_run=str(side.get("run") or ckpt.pt_path.parent.parent),
        dataset_fingerprint=str(ds.get("fingerprint") or "unknown"),
        code_version=str(side.get("code_version") or "unknown"),
        created_at=created_at,
        checkpoint_sha256=ckpt.sha256,
        dataset=ds,
    )


def _finish(
    cfg: OptimizeConfig,
    ckpt: Checkpoint,
    built: list[BuiltVariant],
    parity: dict[str, Any],
    spec: InputSpec,
    ev: Evaluator,
    host: str,
    expected: tuple[AgreementExpectation, ...],
    calib_info: dict[str, Any],
) -> tuple[Manifest, dict[str, Any]]:
    fp32 = built[0]
    ref = fp32.score.value if fp32.score else None
    host_class = hardware_class(detect_profile())
    decisions = choose(
        [b.candidate(ref, host_class) for b in built],
        baseline_id=fp32.id,
        targets=cfg.targets,
        host_class=host_class,
        max_drop=cfg.max_accuracy_drop,
        min_speedup=cfg.min_speedup,
        confidence=cfg.speedup_confidence,
    )
    for hw, d in decisions.items():
        log.info("selection %s: %s — %s", hw, " > ".join(d.order), d.reason)
    gates = default_gates(
        fp32.latency.p95_ms if fp32.latency else 50.0,
        headroom=cfg.latency_headroom,
        min_agreement=cfg.min_agreement,
        budget_ms=cfg.latency_budget_ms,
    )
    # every built variant ships (devices download only theirs), so the file list does not
    # depend on latency measurements; selection decides which one each class runs
    rows = variant_rows(built, fp32, decisions=decisions)
    now = _utc_now()
    manifest = Manifest(
        name=cfg.name,
        version=cfg.version,
        task=ckpt.task,
        labels=ckpt.labels,
        input=spec,
        output=ev.output,
        variants=tuple(b.variant(ref, host, now, ev.metric) for b in built),
        selection={hw: d.entry() for hw, d in decisions.items()},
        gates=gates,
        provenance=_provenance(ckpt, now),
        arch=ckpt.arch,
        expectations=expected,
    )
    warnings = below_floor(expected, release=f"{cfg.name}@{cfg.version}", floor=gates.min_agreement)
    for w in warnings:
        log.warning("%s", w)
    report = report_dict(
        name=cfg.name,
        version=cfg.version,
        metric=ev.metric,
        host=host,
        rows=rows,
        decisions=decisions,
        parity=parity,
        gates=dataclasses.asdict(gates),
        config=cfg.to_dict(),
        expectations=expected,
        calib=calib_info,
        warnings=warnings,
    )
    return manifest, report


def _write(stage: Path, manifest: Manifest, report: dict[str, Any]) -> None:
    (stage / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    (stage / "report.md").write_text(report_markdown(report))
    write_bundle(stage, manifest).chmod(0o644)  # published as a TUF target: readable


def _calib_info(cfg: OptimizeConfig, src: Dataset, ev: Evaluator) -> dict[str, Any]:
    return {
        "source": str(cfg.calib_data) if cfg.calib_data else "train split of the sidecar's dataset",
        "frames": len(ev.calibset) if ev.calibset is not None else 0,
        "available": len(src),
        "skipped": src.skipped,
    }


def optimize(cfg: OptimizeConfig, *, progress: bool = True) -> OptimizeResult:
    """Produce the bundle at ``cfg.out``. Raises :class:`OptimizeError`; ``--out`` is untouched on failure."""
    t0 = time.monotonic()
    _check_out(cfg.out)
    pr = _Progress(progress)
    try:
        ckpt = read_checkpoint(cfg.source)
        if ckpt.input_spec.layout.value != "NCHW":
            raise InputError(f"sidecar input layout {ckpt.input_spec.layout.value} is not supported; expected NCHW")
        pr.step("checkpoint")
        with _staging(cfg.out) as (stage, work):
            calib_src = _calib_source(cfg, ckpt)
            baselines = _baselines(cfg, ckpt, work)
            pr.step("baselines")
            built, parity, spec, ev = _build_variants(cfg, ckpt, calib_src, stage, work, pr)
            host = host_description(1)  # latency is timed single-threaded
            _measure(ev, built, pr)
            pr.step("measure")
            expected = _expectations(cfg, ckpt.task, built, baselines, ev, labels=ckpt.labels)
            pr.step("expectations")
            manifest, report = _finish(
                cfg, ckpt, built, parity, spec, ev, host, expected, _calib_info(cfg, calib_src, ev)
            )
            _write(stage, manifest, report)
            _check_out(cfg.out)
            if cfg.out.exists():
                cfg.out.rmdir()
            stage.chmod(0o755)  # mkdtemp makes it 0700; a bundle is published, not secret
            os.replace(stage, cfg.out)
            pr.step("select + write")
    finally:
        pr.close()
    return OptimizeResult(cfg.out, manifest, report, time.monotonic() - t0)
