"""Expected agreement of the new variants with what the fleet serves: pure functions.

A device judges a candidate by how often it agrees with the model it runs,
frame by frame (:mod:`models.agreement`: top-1 equal, box F1 at IoU 0.5, pixel
agreement). What is *expected* is measured here, with the very same
per-frame definitions, on two sets of frames: the held-out split and the
calibration frames (``--calib-data``: the deployment domain). The result is
one :class:`~models.bundle.AgreementExpectation` per (new variant, baseline
variant), keyed by the baseline's release and file hash. For classification
it also carries the agreement per class *of the baseline* (the class the
baseline predicted, on both sets of frames together: what a device sees of a
frame is the active model's answer), for every class the baseline predicted
on at least :data:`models.stats.MIN_CLASS_FRAMES` frames; the device tests
each of them (:class:`models.stats.ClassAgreementTest`), which catches a
candidate that never predicts one class of many.

Raw outputs are decoded with each model's own output spec and the
preprocessing transform of its own input spec, so two bundles whose
preprocessing differs in resize mode are still compared in frame pixels.

No I/O: the adapters (:mod:`optimize.baseline`, :mod:`optimize.pipeline`)
run the models and pass the decoded frames in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from models.agreement import class_agreement, detection_agreement, mask_agreement
from models.bundle import AgreementExpectation, ClassAgreement, DecoderKind, OutputSpec, Task
from models.preprocess import Transform
from models.runtime.decode import Detections, decode_boxes, decode_mask, pick_outputs
from models.stats import MIN_CLASS_FRAMES

__all__ = [
    "Decoded",
    "FrameSets",
    "Reference",
    "decode_outputs",
    "frame_agreement",
    "mean_agreement",
    "class_agreements",
    "expectations",
    "below_floor",
]

Decoded = int | Detections | np.ndarray | None  # top-1 class | boxes | label map; None: NaN output


@dataclass(frozen=True)
class FrameSets:
    """One model's decoded outputs on the held-out frames and on the calibration frames."""

    heldout: tuple[Decoded, ...]
    calib: tuple[Decoded, ...] = ()


@dataclass(frozen=True)
class Reference:
    """A variant a baseline release serves, and what it decoded on both frame sets."""

    release: str  # "name@version"
    variant: str
    sha256: str
    frames: FrameSets


def decode_outputs(
    outputs: Mapping[str, np.ndarray],
    spec: OutputSpec,
    transforms: Sequence[Transform],
    sizes: Sequence[tuple[int, int]],
) -> tuple[Decoded, ...]:
    """Per-frame decoded results of a batch of raw outputs, as a device decodes them."""
    picked = pick_outputs(outputs, spec)
    kind = spec.decoder.kind
    out: list[Decoded] = []
    for i, (tf, hw) in enumerate(zip(transforms, sizes, strict=True)):
        if kind is DecoderKind.TOPK:
            logits = np.asarray(picked["logits"][i])
            out.append(None if not np.all(np.isfinite(logits)) else int(np.argmax(logits)))
        elif kind is DecoderKind.BOXES:
            out.append(decode_boxes(picked["boxes"][i], picked["scores"][i], spec.decoder, tf, hw))
        else:
            out.append(decode_mask(picked["mask_logits"][i], tf, hw))
    return tuple(out)


def frame_agreement(task: Task, candidate: Decoded, reference: Decoded) -> float:
    """One frame's agreement in [0, 1] (:mod:`models.agreement`); a NaN output agrees with nothing."""
    if candidate is None or reference is None:
        return 0.0
    if task is Task.CLASSIFICATION:
        return class_agreement(int(candidate), int(reference))  # type: ignore[arg-type]
    if task is Task.DETECTION:
        assert isinstance(candidate, Detections) and isinstance(reference, Detections)
        return detection_agreement(candidate, reference)
    return mask_agreement(np.asarray(candidate), np.asarray(reference))


def mean_agreement(task: Task, candidate: Sequence[Decoded], reference: Sequence[Decoded]) -> float:
    """Mean per-frame agreement; the mean is what the device's sequential test estimates.
    ``ValueError`` when the two differ in length or are empty."""
    if len(candidate) != len(reference) or not candidate:
        raise ValueError(f"need the same non-zero number of frames, got {len(candidate)} and {len(reference)}")
    return float(np.mean([frame_agreement(task, c, r) for c, r in zip(candidate, reference, strict=True)]))


def class_agreements(
    task: Task, candidate: FrameSets, reference: FrameSets, labels: Sequence[str], *, min_frames: int = MIN_CLASS_FRAMES
) -> tuple[ClassAgreement, ...]:
    """Mean agreement on the frames (held-out and calibration) the reference predicted as each class,
    in label order, for the classes it predicted on at least ``min_frames`` frames; () unless classification.
    A frame the reference gave NaN on has no class."""
    if task is not Task.CLASSIFICATION:
        return ()
    cand = (*candidate.heldout, *candidate.calib)
    ref = (*reference.heldout, *reference.calib)
    if len(cand) != len(ref):
        raise ValueError(f"need the same frames for both models, got {len(cand)} and {len(ref)}")
    sums = np.zeros(len(labels))
    counts = np.zeros(len(labels), dtype=np.int64)
    for c, r in zip(cand, ref, strict=True):
        if r is None:
            continue
        k = int(r)  # type: ignore[arg-type]
        if not 0 <= k < len(labels):
            raise ValueError(f"reference class {k} is outside the {len(labels)} labels")
        sums[k] += frame_agreement(task, c, r)
        counts[k] += 1
    return tuple(
        ClassAgreement(labels[k], round(float(sums[k] / counts[k]), 4), int(counts[k]))
        for k in range(len(labels))
        if counts[k] >= min_frames
    )


def expectations(
    task: Task, candidates: Mapping[str, FrameSets], references: Sequence[Reference], *, labels: Sequence[str]
) -> tuple[AgreementExpectation, ...]:
    """One expectation per (candidate variant, reference), in the order given, with its per-class
    figures (:func:`class_agreements`; ``labels`` are the bundle's); duplicates (the same release and
    file named twice) are dropped."""
    out: list[AgreementExpectation] = []
    seen: set[tuple[str, str, str]] = set()
    for ref in references:
        for vid, frames in candidates.items():
            key = (vid, ref.release, ref.sha256)
            if key in seen:
                continue
            seen.add(key)
            calib = frames.calib and ref.frames.calib
            out.append(
                AgreementExpectation(
                    variant=vid,
                    baseline=ref.release,
                    baseline_variant=ref.variant,
                    baseline_sha256=ref.sha256,
                    heldout=round(mean_agreement(task, frames.heldout, ref.frames.heldout), 4),
                    heldout_frames=len(frames.heldout),
                    calib=round(mean_agreement(task, frames.calib, ref.frames.calib), 4) if calib else None,
                    calib_frames=len(frames.calib) if calib else 0,
                    per_class=class_agreements(
                        task,
                        frames if calib else FrameSets(frames.heldout),
                        ref.frames if calib else FrameSets(ref.frames.heldout),
                        labels,
                    ),
                )
            )
    return tuple(out)


def below_floor(expected: Sequence[AgreementExpectation], *, release: str, floor: float) -> list[str]:
    """A warning for each expectation under the gates' floor ``min_agreement``: a device judging the
    variant against that baseline tests it against the floor, and the variant does not reach it."""
    out = []
    for e in expected:
        if e.expected >= floor:
            continue
        who = (
            f"a device judging it against its own {e.baseline_variant}"
            if e.baseline == release
            else f"devices running {e.baseline}/{e.baseline_variant}"
        )
        out.append(
            f"{e.variant} is expected to agree {e.expected:.1%} with {e.baseline}/{e.baseline_variant}, "
            f"below the floor min_agreement {floor:.1%}: {who} will refuse this bundle"
        )
    return out
