"""Decisions from noisy measurements: speedup intervals and a sequential agreement test.

Every choice edgefleet takes from a measurement goes through this module, so
that another process keeping a core busy cannot flip it:

- :func:`speedup_interval` — a bootstrap confidence interval of the ratio of
  medians ``median(baseline) / median(candidate)`` of two latency samples. When
  the two were timed interleaved (one query of each per round), the rounds are
  resampled as pairs, so drift of the host during the run cancels out.
- :func:`prefer_faster` — the interval rule: a candidate is preferred over the
  baseline only when the *lower* bound of that interval clears ``min_speedup``.
- :func:`slowed_down` — the same interval the other way round, for a model
  already serving: it regressed only when the lower bound of
  ``median(after) / median(before)`` exceeds the allowed ratio.
- :func:`quantile_lower_bound` — a distribution-free (order-statistic) lower
  confidence bound of a latency quantile: a p95 is over a budget only when that
  bound is.
- :class:`AgreementTest` — Wald's sequential probability ratio test on per-frame
  agreement in [0, 1] between a candidate model and a reference. H0: agreement
  ``>= p0`` (the expectation minus a tolerance: consistent, pass); H1: agreement
  ``<= p0 - effect`` (broken, refuse). It stops as soon as the log-likelihood
  ratio crosses a boundary set by the false-refusal rate ``alpha`` and the
  false-acceptance rate ``beta``; at the frame limit it falls back to a one-sided
  Wilson bound and refuses only when agreement is significantly below ``p0``.
- :class:`ClassAgreementTest` — that overall test plus one SPRT per class of the
  reference model (the class the reference predicted on the frame): a candidate
  that never predicts one class of ten loses only that class's share of the
  frames overall, inside any sane tolerance, but agreement 0 on that class's
  frames. H1 of a class test is a catastrophic failure of the class
  (``p0_c - class_effect``); the false-refusal and false-acceptance rates are
  split across the classes tested (Bonferroni).

numpy only (the agent imports this module): no scipy on a vehicle. No I/O, no
clocks; tests feed recorded samples and sequences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "Interval",
    "SpeedupVerdict",
    "speedup_interval",
    "prefer_faster",
    "SlowdownVerdict",
    "slowed_down",
    "quantile_lower_bound",
    "wilson_bounds",
    "Verdict",
    "AgreementTest",
    "ClassExpectation",
    "ClassAgreementTest",
    "MIN_CLASS_FRAMES",
]

MIN_CLASS_FRAMES = 10  # frames a class's expectation must be measured on before a device tests that class


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided confidence interval."""

    point: float
    low: float
    high: float
    confidence: float

    def to_dict(self) -> dict[str, float]:
        return {
            "point": round(self.point, 4),
            "low": round(self.low, 4),
            "high": round(self.high, 4),
            "confidence": self.confidence,
        }


def speedup_interval(
    baseline_ms: Sequence[float],
    candidate_ms: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    paired: bool = True,
    seed: int = 0,
) -> Interval:
    """Bootstrap (percentile) interval of ``median(baseline) / median(candidate)``.

    ``paired`` resamples round indices jointly (the samples must have equal
    length: round *i* timed one query of each); otherwise each sample is
    resampled on its own. Raises ``ValueError`` on empty or non-positive samples
    or a confidence outside (0, 1).
    """
    b = np.asarray(baseline_ms, dtype=np.float64)
    c = np.asarray(candidate_ms, dtype=np.float64)
    if b.size == 0 or c.size == 0:
        raise ValueError("both latency samples need at least one query")
    if not (np.all(b > 0) and np.all(c > 0) and np.all(np.isfinite(b)) and np.all(np.isfinite(c))):
        raise ValueError("latency samples must be finite and > 0")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be within (0, 1), got {confidence}")
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100, got {resamples}")
    rng = np.random.default_rng(seed)
    point = float(np.median(b) / np.median(c))
    if paired:
        if b.size != c.size:
            raise ValueError(f"paired samples need equal lengths, got {b.size} and {c.size}")
        idx = rng.integers(0, b.size, size=(resamples, b.size))
        ratios = np.median(b[idx], axis=1) / np.median(c[idx], axis=1)
    else:
        bi = rng.integers(0, b.size, size=(resamples, b.size))
        ci = rng.integers(0, c.size, size=(resamples, c.size))
        ratios = np.median(b[bi], axis=1) / np.median(c[ci], axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = (float(x) for x in np.quantile(ratios, [tail, 1.0 - tail]))
    return Interval(point, low, high, confidence)


@dataclass(frozen=True)
class SpeedupVerdict:
    """Whether ``candidate`` is preferred over ``baseline``, and the evidence."""

    candidate: str
    baseline: str
    metric: str  # "cpu" (per-query thread CPU time) or "wall"
    interval: Interval
    min_speedup: float
    queries: int
    preferred: bool

    @property
    def reason(self) -> str:
        i = self.interval
        verdict = "clears" if self.preferred else "does not clear"
        return (
            f"{self.candidate} vs {self.baseline}: {self.metric} speedup {i.point:.2f}x "
            f"[{i.low:.2f}, {i.high:.2f}] at {i.confidence:.0%} over {self.queries} interleaved queries; "
            f"the lower bound {verdict} {self.min_speedup:g}x"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "baseline": self.baseline,
            "metric": self.metric,
            "speedup": self.interval.to_dict(),
            "min_speedup": self.min_speedup,
            "queries": self.queries,
            "preferred": self.preferred,
        }


def prefer_faster(
    baseline: str,
    baseline_ms: Sequence[float],
    candidate: str,
    candidate_ms: Sequence[float],
    *,
    min_speedup: float,
    metric: str = "cpu",
    confidence: float = 0.95,
    paired: bool = True,
    seed: int = 0,
) -> SpeedupVerdict:
    """The interval rule: prefer ``candidate`` only when the lower confidence bound of its
    speedup over ``baseline`` is at least ``min_speedup``. Raises ``ValueError`` as
    :func:`speedup_interval` does, and for ``min_speedup <= 0``."""
    if min_speedup <= 0:
        raise ValueError(f"min_speedup must be > 0, got {min_speedup}")
    interval = speedup_interval(baseline_ms, candidate_ms, confidence=confidence, paired=paired, seed=seed)
    return SpeedupVerdict(
        candidate,
        baseline,
        metric,
        interval,
        min_speedup,
        min(len(baseline_ms), len(candidate_ms)),
        interval.low >= min_speedup,
    )


@dataclass(frozen=True)
class SlowdownVerdict:
    """Whether a model serves significantly slower ``after`` than ``before``, and the evidence."""

    metric: str  # "cpu" or "wall"
    interval: Interval  # of median(after) / median(before)
    max_ratio: float
    before: int  # samples on each side
    after: int
    regressed: bool

    @property
    def reason(self) -> str:
        i = self.interval
        verdict = "exceeds" if self.regressed else "does not exceed"
        return (
            f"{self.metric} time {i.point:.2f}x the shadow run's [{i.low:.2f}, {i.high:.2f}] at "
            f"{i.confidence:.0%} ({self.after} frames after vs {self.before} before); the lower bound "
            f"{verdict} {self.max_ratio:g}x"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "slowdown": self.interval.to_dict(),
            "max_ratio": self.max_ratio,
            "before": self.before,
            "after": self.after,
            "regressed": self.regressed,
        }


def slowed_down(
    before_ms: Sequence[float],
    after_ms: Sequence[float],
    *,
    max_ratio: float,
    metric: str = "cpu",
    confidence: float = 0.95,
    seed: int = 0,
) -> SlowdownVerdict:
    """The interval rule for a regression: ``after`` is slower only when the lower bound of an
    unpaired bootstrap interval of ``median(after) / median(before)`` exceeds ``max_ratio``.

    The two samples come from different windows (a shadow run, then the health window), so
    they are resampled independently. Raises ``ValueError`` as :func:`speedup_interval` does,
    and for ``max_ratio <= 0``.
    """
    if max_ratio <= 0:
        raise ValueError(f"max_ratio must be > 0, got {max_ratio}")
    interval = speedup_interval(after_ms, before_ms, confidence=confidence, paired=False, seed=seed)
    return SlowdownVerdict(metric, interval, max_ratio, len(before_ms), len(after_ms), interval.low > max_ratio)


def quantile_lower_bound(samples: Sequence[float], q: float, *, confidence: float = 0.95) -> float | None:
    """A one-sided, distribution-free lower confidence bound of the ``q`` quantile.

    The bound is the k-th smallest sample for the largest k with
    ``P(Binomial(n, q) >= k) >= confidence``: at least k samples fall at or below the
    true quantile with that probability. ``None`` when ``samples`` is too small for
    any order statistic to be a bound at ``confidence``. Raises ``ValueError`` for
    ``q`` or ``confidence`` outside (0, 1).
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be within (0, 1), got {q}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be within (0, 1), got {confidence}")
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = int(x.size)
    # P(Binomial(n, q) <= k - 1), accumulated in log space for large n.
    k_best, cdf = 0, 0.0
    log_q, log_1q = math.log(q), math.log1p(-q)
    for k in range(1, n + 1):
        j = k - 1
        cdf += math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_q + (n - j) * log_1q)
        if 1.0 - cdf + 1e-12 < confidence:  # P(B >= k) is too small, and falls further with k
            break
        k_best = k
    return float(x[k_best - 1]) if k_best else None


def wilson_bounds(successes: float, n: int, *, confidence: float) -> tuple[float, float]:
    """One-sided Wilson score bounds ``(lower, upper)`` of a binomial proportion, each at ``confidence``.

    ``successes`` may be fractional (a sum of per-frame agreements in [0, 1]).
    ``(0, 1)`` for ``n == 0``.
    """
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(confidence)
    p = min(max(successes / n, 0.0), 1.0)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _check_frame(x: float) -> None:
    """Raises ``ValueError`` unless ``x`` is a per-frame agreement in [0, 1]."""
    if not (0.0 <= x <= 1.0) or math.isnan(x):
        raise ValueError(f"per-frame agreement must be within [0, 1], got {x}")


class Verdict(str, Enum):
    CONTINUE = "continue"  # not decisive yet
    ACCEPT = "accept"  # consistent with the expectation
    REFUSE = "refuse"  # significantly below the expectation


@dataclass
class AgreementTest:
    """Wald's SPRT on per-frame agreement ``x`` in [0, 1] (1 = the two models agree).

    ``p0``: agreement the candidate is expected to reach at least (expectation
    minus tolerance); ``effect``: how far below ``p0`` counts as broken (H1 is
    ``p1 = p0 - effect``); ``alpha``: the false-refusal rate at ``p0``;
    ``beta``: the false-acceptance rate at ``p1``. ``min_frames`` frames are
    always seen; at ``max_frames`` the test ends with the Wilson bound. A
    fractional ``x`` (box F1 or pixel agreement of one frame) enters the
    likelihood ratio as a Bernoulli mean, which is conservative for values in
    [0, 1].
    """

    p0: float
    effect: float = 0.15
    alpha: float = 0.01
    beta: float = 0.01
    min_frames: int = 10
    max_frames: int = 200
    frames: int = 0
    agreed: float = 0.0
    llr: float = 0.0
    verdict: Verdict = Verdict.CONTINUE
    history: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.p0 <= 1.0:
            raise ValueError(f"p0 must be within (0, 1], got {self.p0}")
        if not 0.0 < self.effect < 1.0:
            raise ValueError(f"effect must be within (0, 1), got {self.effect}")
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not 0.0 < v < 0.5:
                raise ValueError(f"{name} must be within (0, 0.5), got {v}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(f"need 1 <= min_frames <= max_frames, got {self.min_frames} and {self.max_frames}")
        # keep both hypotheses strictly inside (0, 1) so every log term is finite
        self._h0 = min(self.p0, 1.0 - 1e-3)
        self._h1 = max(self.p0 - self.effect, 1e-3)
        if self._h1 >= self._h0:
            self._h1 = max(self._h0 - 1e-3, 1e-4)
        self.upper = math.log((1.0 - self.beta) / self.alpha)  # cross it: refuse
        self.lower = math.log(self.beta / (1.0 - self.alpha))  # cross it: accept

    @property
    def p1(self) -> float:
        return self._h1

    @property
    def agreement(self) -> float:
        return self.agreed / self.frames if self.frames else 1.0

    def add(self, x: float) -> Verdict:
        """Record one frame's agreement; returns the verdict so far (final once not CONTINUE)."""
        if self.verdict is not Verdict.CONTINUE:
            return self.verdict
        _check_frame(x)
        self.frames += 1
        self.agreed += x
        self.history.append(x)
        h0, h1 = self._h0, self._h1
        # log L(H1)/L(H0): disagreement is evidence for H1
        self.llr += x * math.log(h1 / h0) + (1.0 - x) * math.log((1.0 - h1) / (1.0 - h0))
        if self.frames >= self.min_frames:
            if self.llr >= self.upper:
                self.verdict = Verdict.REFUSE
            elif self.llr <= self.lower:
                self.verdict = Verdict.ACCEPT
        if self.verdict is Verdict.CONTINUE and self.frames >= self.max_frames:
            self.verdict = self.truncated()
        return self.verdict

    def truncated(self) -> Verdict:
        """Decision when the frames run out: refuse only if the upper bound is below ``p0``."""
        _, upper = wilson_bounds(self.agreed, self.frames, confidence=1.0 - self.alpha)
        return Verdict.REFUSE if self.frames and upper < self.p0 else Verdict.ACCEPT

    def end(self) -> Verdict:
        """End an undecided test now (the frames ran out elsewhere) with :meth:`truncated`."""
        if self.verdict is Verdict.CONTINUE:
            self.verdict = self.truncated()
        return self.verdict

    @property
    def confidence(self) -> float:
        """How sure the verdict is: ``1 - alpha`` for a refusal, ``1 - beta`` for an acceptance."""
        if self.verdict is Verdict.REFUSE:
            return 1.0 - self.alpha
        if self.verdict is Verdict.ACCEPT:
            return 1.0 - self.beta
        return 0.0

    def evidence(self) -> dict[str, Any]:
        """What a report carries: the decision, the frames used, the confidence and the bounds."""
        lo, hi = wilson_bounds(self.agreed, self.frames, confidence=0.95)
        return {
            "decision": self.verdict.value,
            "frames": self.frames,
            "agreement": round(self.agreement, 4),
            "p0": round(self.p0, 4),
            "p1": round(self._h1, 4),
            "alpha": self.alpha,
            "beta": self.beta,
            "llr": round(self.llr, 4),
            "confidence": self.confidence,
            "agreement_ci95": [round(lo, 4), round(hi, 4)],
        }


@dataclass(frozen=True)
class ClassExpectation:
    """The agreement expected on the frames the reference model sees as ``label``, measured on ``frames``."""

    label: str
    expected: float
    frames: int


class ClassAgreementTest:
    """The overall :class:`AgreementTest` plus one SPRT per reference class.

    Each frame is fed with the class the *reference* predicted on it
    (``label``; None when it gave none): the overall test sees every frame,
    the test of that class only its own. A class is tested when its
    expectation was measured on at least ``min_expectation_frames`` frames:
    H0 ``p >= p0_c = max(expected_c - tolerance, floor)``, H1 a catastrophic
    failure ``p <= p1_c = max(p0_c - class_effect, 0.01)``; a class with less
    than ``MIN_ROOM`` between the two is skipped. The overall test keeps its
    ``alpha`` and ``beta``; the class tests share them, ``alpha / k`` and
    ``beta / k`` each for ``k`` classes tested, so the rate at which any class
    test refuses a consistent candidate stays within ``alpha``.

    It refuses as soon as the overall test or any class test refuses (never
    before ``overall.min_frames`` frames), and accepts when the overall test
    has accepted and every class test that has seen a frame has accepted. A
    class test decides as soon as its ratio crosses a boundary (Wald's bounds
    hold from the first frame). At ``overall.max_frames`` frames every
    undecided test ends with its Wilson rule, except a class test that saw
    fewer than ``class_min_frames`` frames (the Wilson bound of a few frames is
    far below the exact one: one disagreeing frame would "refuse" a class
    expected above 90 %): it stays undecided and does not count. Then it
    refuses if any test refuses.
    """

    MIN_ROOM = 0.05  # the least distance between p0_c and p1_c worth a test

    def __init__(
        self,
        overall: AgreementTest,
        classes: Sequence[ClassExpectation],
        *,
        tolerance: float,
        floor: float = 0.0,
        class_effect: float = 0.5,
        class_min_frames: int = 5,
        min_expectation_frames: int = MIN_CLASS_FRAMES,
    ) -> None:
        if overall.frames:
            raise ValueError(f"the overall test must be fresh, it has seen {overall.frames} frames")
        if not 0.0 < class_effect < 1.0:
            raise ValueError(f"class_effect must be within (0, 1), got {class_effect}")
        if not 0.0 <= tolerance < 1.0 or not 0.0 <= floor <= 1.0:
            raise ValueError(f"tolerance must be within [0, 1) and floor within [0, 1], got {tolerance} and {floor}")
        if class_min_frames < 1:
            raise ValueError(f"class_min_frames must be >= 1, got {class_min_frames}")
        labels = [c.label for c in classes]
        if len(set(labels)) != len(labels):
            raise ValueError(f"each class at most once, got {labels}")
        self.overall = overall
        self.class_effect = class_effect
        self.class_min_frames = class_min_frames
        self.skipped: dict[str, str] = {}
        bounds: dict[str, tuple[float, float]] = {}
        for c in classes:
            if not 0.0 <= c.expected <= 1.0:
                raise ValueError(f"expected agreement of class {c.label!r} must be within [0, 1], got {c.expected}")
            p0 = min(1.0, max(c.expected - tolerance, floor, 1e-3))
            p1 = max(p0 - class_effect, 0.01)
            if c.frames < min_expectation_frames:
                self.skipped[c.label] = f"expectation measured on {c.frames} frames (< {min_expectation_frames})"
            elif p0 - p1 < self.MIN_ROOM:
                self.skipped[c.label] = f"p0 {p0:.3f} leaves no room for a failure below it"
            else:
                bounds[c.label] = (p0, p1)
        k = max(len(bounds), 1)
        self.classes: dict[str, AgreementTest] = {
            label: AgreementTest(
                p0=p0,
                effect=p0 - p1,
                alpha=overall.alpha / k,
                beta=overall.beta / k,
                min_frames=1,
                max_frames=overall.max_frames,
            )
            for label, (p0, p1) in bounds.items()
        }
        self.frames = 0
        self.agreed = 0.0
        self.verdict = Verdict.CONTINUE
        self.decided_by: str | None = None  # None: the overall test; else the label of the class test
        self._order: list[str | None] = []  # tests in the order they reached their verdict

    # the attributes of AgreementTest a gate reads
    @property
    def p0(self) -> float:
        return self.overall.p0

    @property
    def min_frames(self) -> int:
        return self.overall.min_frames

    @property
    def max_frames(self) -> int:
        return self.overall.max_frames

    @property
    def agreement(self) -> float:
        """Mean agreement over every frame seen (the overall test stops counting once decided)."""
        return self.agreed / self.frames if self.frames else 1.0

    def decider(self) -> AgreementTest:
        """The test that decided (the overall test while undecided)."""
        return self.overall if self.decided_by is None else self.classes[self.decided_by]

    @property
    def confidence(self) -> float:
        """A refusal: that of the test that refused; an acceptance: the least of the tests that accepted."""
        if self.verdict is Verdict.REFUSE:
            return self.decider().confidence
        if self.verdict is Verdict.ACCEPT:
            return min(t.confidence for _, t in self._tests() if t.verdict is Verdict.ACCEPT)
        return 0.0

    def add(self, x: float, label: str | None = None) -> Verdict:
        """Record one frame's agreement and the reference's class on it; returns the verdict so far."""
        if self.verdict is not Verdict.CONTINUE:
            return self.verdict
        _check_frame(x)
        self.frames += 1
        self.agreed += x
        self._feed(None, self.overall, x)
        test = self.classes.get(label) if label is not None else None
        if test is not None:
            self._feed(label, test, x)
        if self.frames >= self.overall.min_frames:
            self._decide()
        if self.verdict is Verdict.CONTINUE and self.frames >= self.overall.max_frames:
            self._end()
        return self.verdict

    def _feed(self, key: str | None, test: AgreementTest, x: float) -> None:
        if test.verdict is Verdict.CONTINUE and test.add(x) is not Verdict.CONTINUE:
            self._order.append(key)

    def _tests(self) -> list[tuple[str | None, AgreementTest]]:
        return [(None, self.overall), *self.classes.items()]

    def _decide(self) -> None:
        refused = [key for key in self._order if self._test(key).verdict is Verdict.REFUSE]
        if refused:
            self.verdict, self.decided_by = Verdict.REFUSE, refused[0]
            return
        seen = [(key, t) for key, t in self._tests() if key is None or t.frames]
        if all(t.verdict is Verdict.ACCEPT for _, t in seen):
            self.verdict, self.decided_by = Verdict.ACCEPT, self._order[-1] if self._order else None

    def _test(self, key: str | None) -> AgreementTest:
        return self.overall if key is None else self.classes[key]

    def _end(self) -> None:
        for key, t in self._tests():
            if t.verdict is Verdict.CONTINUE and (key is None or t.frames >= self.class_min_frames):
                t.end()
                self._order.append(key)
        refused = [key for key in self._order if self._test(key).verdict is Verdict.REFUSE]
        if refused:
            self.verdict, self.decided_by = Verdict.REFUSE, refused[0]
        else:
            self.verdict, self.decided_by = Verdict.ACCEPT, self._order[-1] if self._order else None

    def class_rows(self, rows: int = 10) -> list[dict[str, Any]]:
        """The class tests that saw frames, the deciding one first, then by agreement minus p0: ``rows`` at most."""
        seen = [(label, t) for label, t in self.classes.items() if t.frames]
        seen.sort(
            key=lambda lt: (
                lt[0] != self.decided_by,
                lt[1].verdict is not Verdict.REFUSE,
                lt[1].agreement - lt[1].p0,
                lt[0],
            )
        )
        return [{"label": label, **t.evidence()} for label, t in seen[:rows]]

    def evidence(self, rows: int = 10) -> dict[str, Any]:
        """The overall test's evidence with the composite decision, which test decided, and the class rows."""
        lo, hi = wilson_bounds(self.agreed, self.frames, confidence=0.95)
        out = {
            **self.overall.evidence(),
            "decision": self.verdict.value,
            "frames": self.frames,
            "agreement": round(self.agreement, 4),
            "agreement_ci95": [round(lo, 4), round(hi, 4)],
            "confidence": self.confidence,
            "overall": self.overall.evidence(),
            "classes_tested": len(self.classes),
            "classes_skipped": len(self.skipped),
            "classes": self.class_rows(rows),
        }
        if self.verdict is not Verdict.CONTINUE:
            out["decided_by"] = "overall" if self.decided_by is None else "class"
            if self.decided_by is not None:
                out["decided_class"] = self.decided_by
        return out
