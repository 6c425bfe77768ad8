"""The CPU budget: how many cores the cameras' capture threads and ONNX Runtime's inference may use.

Without a split, ONNX Runtime's intra-op pool takes every core and spins between
operators while the capture threads decode and resize on the same cores: both
wait for each other. :func:`split_cpu` divides a budget of ``N`` cores (default:
the cores this process may run on, ``os.sched_getaffinity``)::

    capture   = min(cameras, N // 2)      # a core per camera, at most half the budget
    inference = max(1, N - capture)       # ONNX Runtime intra-op threads

so one camera on two cores gets one core for capture and one for inference, four
cameras on eight cores four and four, and a single core is shared (capture 0,
inference 1). OpenCV's own thread pool is set to one thread
(:func:`apply_opencv_threads`): each camera decodes and preprocesses on its capture
thread instead of fanning out over the inference cores.

This module reads the process's affinity and sets OpenCV's thread count; it starts nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from edge_agent.errors import ConfigError

__all__ = ["CpuSplit", "available_cpus", "split_cpu", "apply_opencv_threads"]


@dataclass(frozen=True)
class CpuSplit:
    budget: int  # cores for the whole perception path
    cameras: int
    capture: int  # cores counted for the capture threads (one thread per camera)
    inference: int  # ONNX Runtime intra-op threads
    opencv_threads: int = 1  # cv2.setNumThreads: decode and resize on each capture thread

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "cameras": self.cameras,
            "capture": self.capture,
            "inference": self.inference,
            "opencv_threads": self.opencv_threads,
            "rule": "capture = min(cameras, budget // 2); inference = max(1, budget - capture)",
        }

    def describe(self) -> str:
        return (
            f"CPU budget {self.budget}: {self.capture} for capture ({self.cameras} camera thread"
            f"{'s' if self.cameras != 1 else ''}), {self.inference} ONNX Runtime intra-op thread"
            f"{'s' if self.inference != 1 else ''}"
        )


def available_cpus() -> int:
    """The cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def split_cpu(budget: int | None, cameras: int) -> CpuSplit:
    """The split of ``budget`` cores (None: :func:`available_cpus`) for ``cameras`` cameras.

    Raises :class:`~edge_agent.errors.ConfigError` for a budget below 1 or above the cores
    the process may use, or fewer than one camera.
    """
    have = available_cpus()
    n = have if budget is None else budget
    if n < 1 or n > have:
        raise ConfigError(f"--cpu-budget must be between 1 and the {have} cores this process may use, got {n}")
    if cameras < 1:
        raise ConfigError(f"a CPU split needs at least one camera, got {cameras}")
    capture = min(cameras, n // 2)
    return CpuSplit(budget=n, cameras=cameras, capture=capture, inference=max(1, n - capture))


def apply_opencv_threads(split: CpuSplit) -> None:
    """Set OpenCV's process-wide thread pool to the split's size."""
    import cv2

    cv2.setNumThreads(split.opencv_threads)
