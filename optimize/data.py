"""Images for parity, calibration and the accuracy gates, drawn through ``models.datasets``.

The optimizer sees exactly the samples training evaluated on (the sidecar's
dataset spec) and preprocesses them with :class:`models.preprocess.Preprocessor`
— the same function the device runs on camera frames — so calibration ranges
and accuracy gates reflect what the device will see.

``--calib-data DIR`` replaces the training split for INT8 calibration with
frames from the deployment domain (:class:`FrameFolder`): an ImageFolder root
(class sub-directories, optionally under ``train/``) or a flat directory of
frames, e.g. sampled from the fleet's cameras.

Sample choice is deterministic (evenly spaced indices over sorted files), so
two runs on the same checkpoint calibrate and evaluate on the same images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import InputForm, InputSpec
from models.datasets import DatasetError, DatasetSpec, Sample, open_dataset
from models.datasets.folder import IMAGE_EXTENSIONS, read_image
from models.datasets.spec import Dataset
from models.preprocess import Preprocessor, Transform
from optimize.errors import InputError

__all__ = ["SampleSet", "FrameFolder", "open_split", "spread_indices", "load_samples"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSet:
    """Preprocessed network inputs plus what the decoders and metrics need."""

    inputs: np.ndarray  # [N, ...] float32 in the spec's layout
    samples: tuple[Sample, ...]
    transforms: tuple[Transform, ...]
    sizes: tuple[tuple[int, int], ...]  # frame (h, w)
    frames: np.ndarray | None = None  # [N, H, W, 3] uint8 BGR: the same frames resized, what a frame-form variant takes

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def head(self, n: int) -> SampleSet:
        frames = None if self.frames is None else self.frames[:n]
        return SampleSet(self.inputs[:n], self.samples[:n], self.transforms[:n], self.sizes[:n], frames)

    def inputs_for(self, form: InputForm) -> np.ndarray:
        """What a variant of input ``form`` runs on: the preprocessed tensors or the resized frames."""
        if form is InputForm.TENSOR:
            return self.inputs
        if self.frames is None:
            raise ValueError("these samples were loaded without their resized frames")
        return self.frames


def open_split(dataset: Mapping[str, Any], split: str) -> Dataset:
    """Open a split of the sidecar's dataset; errors become :class:`InputError`."""
    if not dataset:
        raise InputError("the checkpoint sidecar has no 'dataset' spec; optimize needs it for calibration")
    # the sidecar may carry extra keys beside the spec (fingerprints per split): keep the spec's own
    known = {f.name for f in dataclasses.fields(DatasetSpec)}
    try:
        return open_dataset(DatasetSpec.from_dict({k: v for k, v in dataset.items() if k in known}), split=split)
    except DatasetError as e:
        raise InputError(f"cannot open the {split} split of the sidecar's dataset: {e}") from e


def spread_indices(total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(total)`` (all of them when ``n >= total``)."""
    if total <= 0:
        return []
    if n >= total:
        return list(range(total))
    return sorted({int(i) for i in np.linspace(0, total - 1, n).round()})


def load_samples(ds: Dataset, n: int, spec: InputSpec, *, indices: Sequence[int] | None = None) -> SampleSet:
    """Read and preprocess ``n`` spread samples (or ``indices``) of ``ds``."""
    idx = list(indices) if indices is not None else spread_indices(len(ds), n)
    if not idx:
        raise InputError("the dataset split is empty: nothing to calibrate or evaluate on")
    pre, resize = Preprocessor(spec), Preprocessor(spec, InputForm.FRAME)
    inputs, frames, samples, transforms, sizes = [], [], [], [], []
    for i in idx:
        s = ds[i]
        inputs.append(pre(s.image))
        frames.append(resize(s.image))
        transforms.append(pre.last_transform)
        samples.append(s)
        sizes.append((int(s.image.shape[0]), int(s.image.shape[1])))
    return SampleSet(np.stack(inputs), tuple(samples), tuple(transforms), tuple(sizes), np.stack(frames))


class FrameFolder(Dataset):
    """Every image under ``root`` (under ``root/train`` when that exists), labels ignored.

    One reader for both layouts ``--calib-data`` accepts: an ImageFolder root
    (``root/<class>/*.jpg``, optionally ``root/train/<class>/*.jpg``; a
    ``val/`` beside ``train/`` stays held out) and a flat directory of frames
    (``root/*.png``). Files are sorted by relative path and decoded once at
    open; unreadable ones are skipped and counted. Raises :class:`InputError`
    for a missing or empty directory or one without a readable image.
    """

    def __init__(self, root: Path) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise InputError(
                f"--calib-data {root} does not exist or is not a directory; expected an ImageFolder "
                "root or a directory of frames (jpg/png)"
            )
        base = root / "train" if (root / "train").is_dir() else root
        files = sorted(
            (
                p
                for p in base.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(base).parts)
            ),
            key=lambda p: p.relative_to(base).as_posix(),
        )
        if not files:
            raise InputError(f"--calib-data {base} holds no image files (looked for {sorted(IMAGE_EXTENSIONS)})")
        self.root, self.base, self.labels = root, base, ()
        # decode once now so a corrupt frame is found at open, not in the middle of calibration
        readable = {p for p in files if read_image(p) is not None}
        self.files = [p for p in files if p in readable]
        self.skipped_files = [p for p in files if p not in readable]
        self.skipped = len(self.skipped_files)
        if not self.files:
            raise InputError(
                f"--calib-data {base}: none of the {len(files)} image files could be decoded, "
                f"e.g. {[str(p) for p in files[:3]]}"
            )
        if self.skipped:
            log.warning(
                "--calib-data %s: skipped %d unreadable image(s), e.g. %s",
                base,
                self.skipped,
                [str(p) for p in self.skipped_files[:3]],
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        path = self.files[self._check_index(index)]
        img = read_image(path)
        if img is None:
            raise InputError(f"--calib-data: {path} became unreadable after it was opened")
        return Sample(image=img)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for p in self.files:
            digest.update(f"{p.relative_to(self.base).as_posix()}:{p.stat().st_size}\n".encode())
        return "sha256:" + digest.hexdigest()
