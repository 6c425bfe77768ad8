"""Baselines: the releases the new bundle replaces (``--baseline``, ``--baseline-release``).

A baseline must be a bundle of the same model: same name and task, an input
spec the same camera frame passes through alike (size, layout, colour order,
scale, mean, std) and the same labels in the same order. Anything else is an
:class:`~optimize.errors.InputError` raised before any variant is built.

For each baseline the optimizer compares the new variants with the variants
the baseline *serves*: the first entry of its selection for each target
hardware class, plus its ``onnx-fp32``. Those run here on ONNX Runtime (CPU);
one it cannot run (a TensorRT engine, a model ONNX Runtime refuses) is
skipped with a log line. The comparisons themselves are :mod:`optimize.expect`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.bundle import BundleError, Format, InputForm, InputSpec, Manifest, Task, read_bundle, verify_bundle
from models.preprocess import Preprocessor
from models.runtime.errors import ModelRuntimeError
from models.runtime.onnxrt import OrtOptions, OrtRuntime
from optimize.data import SampleSet
from optimize.errors import InputError
from optimize.evaluate import infer_all
from optimize.expect import Decoded, FrameSets, Reference, decode_outputs

__all__ = ["Baseline", "served_variants", "check_compatible", "open_baseline", "references"]

log = logging.getLogger(__name__)
FP32 = "onnx-fp32"


@dataclass(frozen=True)
class Baseline:
    """A verified baseline bundle directory and the variants of it the fleet may be serving."""

    directory: Path
    manifest: Manifest
    served: tuple[str, ...]
    origin: str  # "--baseline DIR" or "--baseline-release NAME@VERSION"


def served_variants(manifest: Manifest, targets: Sequence[str]) -> tuple[str, ...]:
    """Every variant a device of ``targets`` may serve: the first choice of ``manifest.selection``
    for each target, then the rest of each order (a device times its class's variants and may
    serve a later one), then ``onnx-fp32``. A device serving a variant with no expectation would
    judge a candidate only against the candidate's own FP32, which a wrong label order passes."""
    orders = [manifest.selection[t].order for t in targets if t in manifest.selection]
    ids = [order[0] for order in orders] + [vid for order in orders for vid in order[1:]]
    if any(v.id == FP32 for v in manifest.variants):
        ids.append(FP32)
    return tuple(dict.fromkeys(ids))


def _spec_key(spec: InputSpec) -> dict[str, object]:
    return {
        "size (C, H, W)": tuple(spec.shape[1:]),
        "layout": spec.layout.value,
        "colour order": spec.color_order.value,
        "scale": round(spec.scale, 9),
        "mean": tuple(round(m, 6) for m in spec.mean),
        "std": tuple(round(s, 6) for s in spec.std),
    }


def check_compatible(
    manifest: Manifest,
    *,
    origin: str,
    name: str,
    version: str,
    task: Task,
    labels: Sequence[str],
    input_spec: InputSpec,
) -> None:
    """Raise :class:`InputError` unless ``manifest`` is an earlier release of the same model."""
    if manifest.name != name:
        raise InputError(f"{origin} is a bundle of {manifest.name!r}; expected a release of {name!r}")
    if manifest.version == version:
        raise InputError(
            f"{origin} is {manifest.release}, the very release being built; a baseline is the release this one replaces"
        )
    if manifest.task is not task:
        raise InputError(f"{origin} is a {manifest.task.value} model; expected {task.value}")
    ours, theirs = _spec_key(input_spec), _spec_key(manifest.input)
    diff = {k: (theirs[k], ours[k]) for k in ours if ours[k] != theirs[k]}
    if diff:
        shown = "; ".join(f"{k}: baseline {a}, new {b}" for k, (a, b) in diff.items())
        raise InputError(
            f"{origin} has an incompatible input spec ({shown}): the same camera frame "
            "would not reach both models alike"
        )
    if tuple(manifest.labels) != tuple(labels):
        if sorted(manifest.labels) == sorted(labels):
            i = next(i for i, (a, b) in enumerate(zip(manifest.labels, labels, strict=True)) if a != b)
            raise InputError(
                f"{origin} has the same labels in another order (index {i}: baseline "
                f"{manifest.labels[i]!r}, new {labels[i]!r}); agreement would compare other classes"
            )
        missing, extra = sorted(set(labels) - set(manifest.labels)), sorted(set(manifest.labels) - set(labels))
        raise InputError(
            f"{origin} has another label set ({len(manifest.labels)} labels; missing {missing[:5]}, "
            f"extra {extra[:5]}); expected the {len(labels)} labels of the checkpoint"
        )


def open_baseline(
    directory: Path, *, origin: str, targets: Sequence[str], check: Callable[[Manifest], None]
) -> Baseline:
    """Read the bundle in ``directory``, ``check`` its manifest (e.g. :func:`check_compatible`,
    raising :class:`InputError`) and verify the files of the variants it serves."""
    if not Path(directory).is_dir():
        raise InputError(f"{origin}: {directory} is not a directory; expected a bundle directory")
    try:
        manifest = read_bundle(directory, verify=False)
    except BundleError as e:
        raise InputError(f"{origin} is not a bundle: {e}") from e
    check(manifest)
    served = served_variants(manifest, targets)
    try:
        verify_bundle(directory, manifest, variant_ids=served)
    except BundleError as e:
        raise InputError(f"{origin}: a served variant's file does not match its manifest: {e}") from e
    return Baseline(Path(directory), manifest, served, origin)


def _decoded(rt: OrtRuntime, frames: SampleSet, manifest: Manifest, form: InputForm) -> tuple[Decoded, ...]:
    pre = Preprocessor(manifest.input, form)  # a frame-form variant takes the resized uint8 frame
    inputs, transforms = [], []
    for s in frames.samples:
        inputs.append(pre(s.image))
        transforms.append(pre.last_transform)
    batch = 1 if isinstance(rt.input_shape[0], int) else 32
    out = infer_all(rt.run, np.stack(inputs), batch_size=batch)
    return decode_outputs(out, manifest.output, transforms, frames.sizes)


def references(baseline: Baseline, heldout: SampleSet, calib: SampleSet, *, threads: int | None) -> list[Reference]:
    """What each served variant ONNX Runtime (CPU) can run decodes on both frame sets."""
    out = []
    m = baseline.manifest
    for vid in baseline.served:
        v = m.variant(vid)
        if v.format is not Format.ONNX:
            log.warning(
                "%s: skipping expectations against %s of %s: ONNX Runtime (CPU) cannot run a %s",
                baseline.origin,
                vid,
                m.release,
                v.format.value,
            )
            continue
        try:
            rt = OrtRuntime(
                baseline.directory / v.file,
                OrtOptions(providers=("CPUExecutionProvider",), intra_op_threads=threads, allow_spinning=False),
            )
        except ModelRuntimeError as e:
            log.warning(
                "%s: skipping expectations against %s of %s: ONNX Runtime (CPU) cannot run it: %s",
                baseline.origin,
                vid,
                m.release,
                str(e)[:200],
            )
            continue
        try:
            frames = FrameSets(_decoded(rt, heldout, m, v.input_form), _decoded(rt, calib, m, v.input_form))
        except ModelRuntimeError as e:
            log.warning(
                "%s: skipping expectations against %s of %s: inference failed: %s",
                baseline.origin,
                vid,
                m.release,
                str(e)[:200],
            )
            continue
        finally:
            rt.close()
        out.append(Reference(m.release, vid, v.sha256, frames))
    return out
