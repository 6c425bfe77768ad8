"""Synthetic sample frames: what a model is checked on where no camera frame is at hand.

The child-process gate (:mod:`edge_agent.update.prepare`) checks each staged
variant on them for NaNs and times it; the headless health watch
(:mod:`edge_agent.perception.headless`) re-checks the active model on them.
The frames are the same in every run (seeded). This module does not open
cameras (:mod:`edge_agent.perception.camera`) nor run models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["sample_frames"]


def sample_frames(n: int, *, size: tuple[int, int] = (96, 128), seed: int = 0) -> list[np.ndarray]:
    """Deterministic uint8 BGR frames: primary colours, grey and noise."""
    import numpy as np  # lazily: the agent process needs numpy only when it checks a model

    rng = np.random.default_rng(seed)
    h, w = size
    frames: list[np.ndarray] = []
    colours = [(0, 0, 220), (0, 220, 0), (220, 0, 0), (128, 128, 128)]
    for i in range(n):
        if i % 5 == 4:
            frames.append(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        else:
            frame = np.empty((h, w, 3), dtype=np.uint8)
            frame[:] = colours[i % 4]
            noise = rng.integers(-20, 21, size=(h, w, 3))
            frames.append(np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return frames
