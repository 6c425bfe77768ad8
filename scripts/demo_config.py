"""What one demo run is: :class:`DemoConfig`, built once by ``scripts/demo.py`` from its flags.

The flow (:mod:`demo_flow`) reads it and nothing changes it afterwards. It
parses no flags (``demo.py`` does) and starts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from demo_build import LONGER_CONFIG, TRAIN_CONFIG

__all__ = ["DemoConfig"]


@dataclass(frozen=True)
class DemoConfig:
    out: Path
    agents: int = 4
    quick: bool = False
    keep_running: bool = False
    port: int | None = None  # None = a free port
    train_config: Path = TRAIN_CONFIG  # 1.0.0
    next_train_config: Path = LONGER_CONFIG  # 1.1.0, started from 1.0.0's weights
    poll_s: float = 1.0  # agent poll interval, seconds
    rollout_timeout_s: float = 900.0  # per rollout: bounds a stuck rollout, a slow one just takes longer
    settle_timeout_s: float = 300.0  # after the halt, for the vehicles' last reports
    video_s: float = 24.0  # camera video length (files loop); one sign per frame
    camera_fps: float = 15.0  # video frame rate; agents capture at most this fast
    calib_every: int = 4  # every n-th camera frame becomes a calibration frame
    health_window_s: float | None = 10.0  # agents' health watch after a swap; None = the bundle's gate
    stages: tuple[int, ...] = (25, 50, 100)
    max_failure_rate: float = 0.2
    latency_budget_ms: float = (
        250.0  # the bundles' p95 budget (edge-optimize): generous, this host is shared and CPU-only
    )
    min_agreement: float | None = None  # None = the bundle's own gate (set by edge-optimize)
