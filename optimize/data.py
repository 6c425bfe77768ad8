"""Images for parity, calibration and the accuracy gates, drawn through ``models.datasets``.

The optimizer sees exactly the samples training evaluated on (the sidecar's
dataset spec) and preprocesses them with :class:`models.preprocess.Preprocessor`
— the same function the device runs on camera frames — so calibration ranges
and accuracy gates reflect what the device will see.

Sample choice is deterministic (evenly spaced indices), so two runs on the
same checkpoint calibrate and evaluate on the same images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.bundle import InputSpec
from models.datasets import DatasetError, DatasetSpec, Sample, open_dataset
from models.datasets.spec import Dataset
from models.preprocess import Preprocessor, Transform
from optimize.errors import InputError

__all__ = ["SampleSet", "open_split", "spread_indices", "load_samples"]


@dataclass(frozen=True)
class SampleSet:
    """Preprocessed network inputs plus what the decoders and metrics need."""

    inputs: np.ndarray  # [N, ...] float32 in the spec's layout
    samples: tuple[Sample, ...]
    transforms: tuple[Transform, ...]
    sizes: tuple[tuple[int, int], ...]  # frame (h, w)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def head(self, n: int) -> SampleSet:
        return SampleSet(self.inputs[:n], self.samples[:n], self.transforms[:n], self.sizes[:n])


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
    pre = Preprocessor(spec)
    inputs, samples, transforms, sizes = [], [], [], []
    for i in idx:
        s = ds[i]
        inputs.append(pre(s.image))
        transforms.append(pre.last_transform)
        samples.append(s)
        sizes.append((int(s.image.shape[0]), int(s.image.shape[1])))
    return SampleSet(np.stack(inputs), tuple(samples), tuple(transforms), tuple(sizes))
