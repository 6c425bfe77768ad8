"""The seam between the agent's update path and its perception path.

The update state machine decides *whether* a candidate model may take over;
a :class:`Perception` implementation owns *how* models serve frames: the
shadow run of a candidate beside the active model, the zero-drop hot swap,
and the health watch after it. ``edge_agent.perception.serving.CameraPerception`` serves
a camera; ``edge_agent.perception.headless.HeadlessPerception`` judges on sample frames
when the agent runs without one.

This module holds only the interface and its result types; no I/O. The
package :mod:`edge_agent.perception` re-exports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from models.bundle import ClassAgreement, Gates
from models.reasons import ReasonCode

__all__ = ["GateResult", "SwapResult", "JudgedAgainst", "GateContext", "Perception"]


@dataclass(frozen=True)
class GateResult:
    """Outcome of a child-process gate, a shadow run or a health window.

    ``reason_code`` is a :class:`~models.reasons.ReasonCode` exactly when
    ``passed`` is false (``LOW_AGREEMENT``, ``NOT_ENOUGH_FRAMES``, ``NAN_OUTPUT``
    ...); anything else raises at construction, so a failure never travels
    without its reason and a string never passes for a code. ``evidence`` is
    JSON-ready and goes to the server as the report's ``gate`` object
    (docs/contracts.md §7): ``"agreement"`` (the sequential test), ``"variant"``
    (the variant the device serves), ``"timing"``.
    """

    passed: bool
    reason_code: ReasonCode | None = None
    detail: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)  # p95_ms, agreement, frames ...
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        code = self.reason_code
        if code is not None and not isinstance(code, ReasonCode):
            raise TypeError(
                f"reason_code must be a ReasonCode or None, got {code!r}; parse strings with ReasonCode.parse"
            )
        if self.passed and code is not None:
            raise ValueError(f"a passed gate carries no reason code, got {code.value}")
        if not self.passed and code is None:
            raise ValueError(f"a failed gate needs a reason code (detail: {self.detail!r})")


class JudgedAgainst(str, Enum):
    """What the shadow run compares the candidate with."""

    ACTIVE = "active"  # the model serving now, on the frames it served
    OWN_FP32 = "own-fp32"  # the candidate bundle's own FP32 variant, run beside it on the same frames


@dataclass(frozen=True)
class GateContext:
    """How much agreement to expect from the candidate, and with what.

    ``expected`` feeds the sequential test's ``p0 = gates.agreement_threshold(expected)``;
    ``baseline`` names the release the candidate is compared with (``"name@version"``,
    None when unknown) and ``baseline_variant`` its variant. For :attr:`JudgedAgainst.OWN_FP32`
    ``baseline_variant`` is the variant of the candidate's slot that the shadow
    run loads as the reference. ``candidate_variant`` None: the slot's variant.
    ``why`` says, for the report, why this comparison was chosen. ``per_class``:
    the expectation's breakdown by the reference's class; when given, the shadow
    run tests each class as well (:class:`models.stats.ClassAgreementTest`).
    """

    expected: float
    baseline: str | None = None
    judged_against: JudgedAgainst = JudgedAgainst.ACTIVE
    baseline_variant: str | None = None
    candidate_variant: str | None = None
    why: str = ""
    per_class: tuple[ClassAgreement, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.expected <= 1.0:
            raise ValueError(f"expected agreement must be within [0, 1], got {self.expected}")
        if self.judged_against is JudgedAgainst.OWN_FP32 and not self.baseline_variant:
            raise ValueError("judging against the bundle's own FP32 needs its variant id (baseline_variant)")

    @classmethod
    def floor(cls, gates: Gates, *, baseline: str | None = None, why: str = "") -> GateContext:
        """Judge against the active model with nothing to expect but the floor ``gates.min_agreement``."""
        return cls(
            expected=gates.min_agreement,
            baseline=baseline,
            judged_against=JudgedAgainst.ACTIVE,
            why=why or "no agreement expectation: the floor min_agreement",
        )

    def evidence(self) -> dict[str, Any]:
        """The report's view (``gate.agreement``); None values are left out."""
        out = {
            "expected": round(self.expected, 4),
            "baseline": self.baseline,
            "baseline_variant": self.baseline_variant,
            "judged_against": self.judged_against.value,
            "why": self.why or None,
        }
        return {k: v for k, v in out.items() if v is not None}


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

    def shadow(
        self, candidate_dir: Path, gates: Gates, *, timeout_s: float, context: GateContext | None = None
    ) -> GateResult:
        """Load and warm the candidate beside the active model and judge it on live frames.

        ``context`` says what to compare it with and how much agreement to expect;
        None judges it against the active model with the floor ``gates.min_agreement``.
        """

    def swap(self) -> SwapResult:
        """Make the candidate of the last passed :meth:`shadow` the active model, between two frames."""

    def watch(self, gates: Gates, *, window_s: float) -> GateResult:
        """Health window after a swap: errors, NaNs, latency against the shadow baseline."""

    def swap_back(self, previous_dir: Path) -> SwapResult:
        """Zero-drop swap back to the previous model after a failed health window."""
