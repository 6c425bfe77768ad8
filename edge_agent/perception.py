"""The seam between the agent's update path and its perception path.

The update state machine decides *whether* a candidate model may take over;
a :class:`Perception` implementation owns *how* models serve frames: the
shadow run of a candidate beside the active model, the zero-drop hot swap,
and the health watch after it. ``edge_agent.serving.CameraPerception`` serves
a camera; ``edge_agent.headless.HeadlessPerception`` judges on sample frames
when the agent runs without one.

This module holds only the interface and its result types; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from models.bundle import Gates

__all__ = ["GateResult", "SwapResult", "Perception"]


@dataclass(frozen=True)
class GateResult:
    """Outcome of a shadow run or a health window.

    ``reason_code`` is one of the report reason codes of docs/contracts.md §7
    (``LOW_AGREEMENT``, ``LATENCY_OVER_BUDGET``, ``NAN_OUTPUT``,
    ``HEALTH_REGRESSION``, ``MODEL_LOAD_FAILED`` ...) when ``passed`` is false.
    """

    passed: bool
    reason_code: str | None = None
    detail: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)  # p95_ms, agreement, frames ...


@dataclass(frozen=True)
class SwapResult:
    ok: bool
    swap_ms: float = 0.0
    frames_dropped: int = 0
    detail: str = ""


@runtime_checkable
class Perception(Protocol):
    def start(self, active_bundle_dir: Path) -> None:
        """Begin serving the active model (no-op for headless)."""

    def stop(self) -> None:
        """Stop serving and release the camera and runtimes."""

    def active_version(self) -> str | None:
        """``"name@version"`` of the model serving now, or None."""

    def counters(self) -> dict[str, float]:
        """Frame counters and rates: captured, inferred, dropped, fps ..."""

    def shadow(self, candidate_dir: Path, gates: Gates, *, timeout_s: float) -> GateResult:
        """Load and warm the candidate beside the active model and judge it on live frames."""

    def swap(self) -> SwapResult:
        """Make the candidate of the last passed :meth:`shadow` the active model, between two frames."""

    def watch(self, gates: Gates, *, window_s: float) -> GateResult:
        """Health window after a swap: errors, NaNs, latency against the shadow baseline."""

    def swap_back(self, previous_dir: Path) -> SwapResult:
        """Zero-drop swap back to the previous model after a failed health window."""
