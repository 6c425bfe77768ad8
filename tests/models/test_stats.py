"""models.stats on recorded sequences: the sequential agreement test, its per-class composite, the Wilson
bound, the interval rule."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from models.stats import (
    AgreementTest,
    ClassAgreementTest,
    ClassExpectation,
    Verdict,
    prefer_faster,
    quantile_lower_bound,
    slowed_down,
    speedup_interval,
    wilson_bounds,
)

# p0 0.9, p1 0.75, alpha = beta = 0.01: an agreeing frame adds log(0.75/0.9) = -0.1823 to the
# log-likelihood ratio, a disagreeing one log(0.25/0.1) = +0.9163; the boundaries are -+log(99) = -+4.595
AGREE, DISAGREE, BOUND = math.log(0.75 / 0.9), math.log(0.25 / 0.1), math.log(99.0)


def _test(**kw: float) -> AgreementTest:
    args: dict[str, float] = {
        "p0": 0.9,
        "effect": 0.15,
        "alpha": 0.01,
        "beta": 0.01,
        "min_frames": 10,
        "max_frames": 200,
    }
    args.update(kw)
    return AgreementTest(**args)  # type: ignore[arg-type]


def _feed(test: AgreementTest, xs: list[float]) -> list[Verdict]:
    return [test.add(x) for x in xs]


def test_agreeing_frames_accept_exactly_when_the_ratio_crosses_the_lower_boundary() -> None:
    frames = math.ceil(BOUND / -AGREE)  # 26
    t = _test()
    verdicts = _feed(t, [1.0] * frames)
    assert verdicts[:-1] == [Verdict.CONTINUE] * (frames - 1) and verdicts[-1] is Verdict.ACCEPT
    assert t.frames == frames and t.llr == pytest.approx(frames * AGREE)
    assert t.confidence == 0.99


def test_disagreeing_frames_refuse_but_never_before_min_frames() -> None:
    crossing = math.ceil(BOUND / DISAGREE)  # 6
    early = _test(min_frames=1)
    assert _feed(early, [0.0] * crossing)[-1] is Verdict.REFUSE and early.frames == crossing
    late = _test(min_frames=10)
    verdicts = _feed(late, [0.0] * 10)
    assert verdicts[:9] == [Verdict.CONTINUE] * 9 and verdicts[9] is Verdict.REFUSE  # crossed at 6, held to 10
    assert late.frames == 10 and late.agreement == 0.0


def test_fractional_agreement_enters_as_a_bernoulli_mean() -> None:
    step = 0.5 * AGREE + 0.5 * DISAGREE  # +0.367 a frame: refused at frame 13
    t = _test()
    verdicts = _feed(t, [0.5] * 13)
    assert verdicts[-2] is Verdict.CONTINUE and verdicts[-1] is Verdict.REFUSE
    assert t.llr == pytest.approx(13 * step) and t.agreement == 0.5
    high = _test()
    assert _feed(high, [0.97] * 40)[-1] is Verdict.ACCEPT  # a box F1 of 0.97 a frame is consistent


def test_a_verdict_is_final_and_later_frames_are_not_counted() -> None:
    t = _test(min_frames=1)
    _feed(t, [0.0] * 6)
    assert t.verdict is Verdict.REFUSE
    assert t.add(1.0) is Verdict.REFUSE and t.frames == 6


def _pattern(ones: int, zeros: int, repeats: int) -> list[float]:
    """``zeros`` disagreements spread evenly among ``ones`` agreements, repeated."""
    block = [1.0] * (ones + zeros)
    for k in range(zeros):
        block[(k + 1) * (ones + zeros) // zeros - 1] = 0.0
    return block * repeats


def test_at_max_frames_the_wilson_bound_refuses_only_when_significantly_below_p0() -> None:
    below = _pattern(3, 1, 10)  # 75 % over 40 frames: the ratio never crosses, Wilson's upper bound 0.873 < 0.9
    t = _test(max_frames=40)
    verdicts = _feed(t, below)
    assert verdicts[:-1] == [Verdict.CONTINUE] * 39 and verdicts[-1] is Verdict.REFUSE
    assert abs(t.llr) < BOUND
    upper = wilson_bounds(30, 40, confidence=0.99)[1]
    assert upper == pytest.approx(0.8726, abs=1e-3) and upper < 0.9

    near = _pattern(17, 3, 2)  # 85 % over 40 frames: not significantly below 0.9 (upper bound 0.938)
    t = _test(max_frames=40)
    assert _feed(t, near)[-1] is Verdict.ACCEPT and t.frames == 40 and abs(t.llr) < BOUND
    assert wilson_bounds(34, 40, confidence=0.99)[1] > 0.9


def test_wilson_bounds_match_the_textbook_interval() -> None:
    low, high = wilson_bounds(8, 10, confidence=0.975)  # one-sided 97.5 % = the two-sided 95 % interval
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson_bounds(0, 0, confidence=0.95) == (0.0, 1.0)
    assert wilson_bounds(7.5, 10, confidence=0.95)[0] < 0.75 < wilson_bounds(7.5, 10, confidence=0.95)[1]


def test_evidence_carries_the_decision_frames_confidence_and_bounds() -> None:
    t = _test(min_frames=1)
    _feed(t, [0.0] * 6)
    ev = t.evidence()
    assert ev["decision"] == "refuse" and ev["frames"] == 6 and ev["confidence"] == 0.99
    assert ev["p0"] == 0.9 and ev["p1"] == 0.75 and ev["agreement"] == 0.0
    assert ev["agreement_ci95"][0] == 0.0 and 0.0 < ev["agreement_ci95"][1] < 0.5


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"p0": 0.0}, "p0"),
        ({"p0": 1.2}, "p0"),
        ({"effect": 0.0}, "effect"),
        ({"effect": 1.0}, "effect"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 0.5}, "alpha"),
        ({"beta": 0.7}, "beta"),
        ({"min_frames": 0}, "min_frames"),
        ({"min_frames": 30, "max_frames": 20}, "min_frames"),
    ],
)
def test_bad_parameters_raise(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _test(**kw)


@pytest.mark.parametrize("x", [-0.1, 1.01, float("nan")])
def test_agreement_outside_zero_one_raises(x: float) -> None:
    t = _test()
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        t.add(x)
    assert t.frames == 0


def test_the_interval_rule_prefers_a_variant_only_when_its_lower_bound_clears() -> None:
    rng = np.random.default_rng(3)
    base = 10.0 + rng.exponential(0.5, 200)
    twice = base / 2.0 + rng.exponential(0.05, 200)
    noise = base * rng.uniform(0.9, 1.15, 200)  # about as fast: the point may exceed 1.1, the bound does not
    assert prefer_faster("fp32", base, "int8", twice, min_speedup=1.1).preferred
    verdict = prefer_faster("fp32", base, "int8", noise, min_speedup=1.1)
    assert not verdict.preferred and verdict.interval.low < 1.1
    assert "does not clear 1.1x" in verdict.reason
    with pytest.raises(ValueError, match="equal lengths"):
        speedup_interval(base, twice[:10])


# ----------------------------------------------------------------------------- per-class tests
# Ten classes expected to agree 97 % each (p0_c 0.92, p1_c 0.42 with class effect 0.5); alpha and beta 0.01
# split over ten class tests: 0.001 each, boundaries -+log(999) = -+6.907. A disagreeing frame of a class adds
# log(0.58 / 0.08) = +1.981 to that class's ratio (4 of them refuse), an agreeing one log(0.42 / 0.92) = -0.784
# (9 of them accept).
TEN = [f"c{i}" for i in range(10)]
C_AGREE, C_DISAGREE, C_BOUND = math.log(0.42 / 0.92), math.log(0.58 / 0.08), math.log(999.0)


def _classes(expected: float = 0.97, frames: int = 100, labels: list[str] = TEN) -> list[ClassExpectation]:
    return [ClassExpectation(label, expected, frames) for label in labels]


def _composite(classes: list[ClassExpectation] | None = None, **kw: float) -> ClassAgreementTest:
    extra = {k: kw.pop(k) for k in ("class_effect", "class_min_frames", "floor") if k in kw}
    return ClassAgreementTest(_test(**kw), _classes() if classes is None else classes, tolerance=0.05, **extra)  # type: ignore[arg-type]


def _cycle(dead: set[str], frames: int, labels: list[str] = TEN) -> list[tuple[float, str]]:
    """Frames of the classes in turn; the candidate disagrees exactly on the classes in ``dead``."""
    return [(0.0 if labels[i % len(labels)] in dead else 1.0, labels[i % len(labels)]) for i in range(frames)]


def _feed_classes(test: ClassAgreementTest, frames: Sequence[tuple[float, str | None]]) -> list[Verdict]:
    out = []
    for x, label in frames:
        out.append(test.add(x, label))
        if out[-1] is not Verdict.CONTINUE:
            break
    return out


def test_a_class_never_predicted_is_refused_by_its_class_test_while_overall_agreement_passes() -> None:
    assert math.ceil(C_BOUND / C_DISAGREE) == 4
    frames = _cycle({"c9"}, 200)  # 90 % overall: inside the tolerance of p0 0.9
    t = _composite()
    verdicts = _feed_classes(t, frames)
    assert len(verdicts) == 40 and verdicts[-1] is Verdict.REFUSE  # the 4th frame of c9 is frame 40
    assert t.decided_by == "c9" and t.classes["c9"].llr == pytest.approx(4 * C_DISAGREE)
    assert t.overall.verdict is Verdict.CONTINUE and t.confidence == pytest.approx(0.999)
    alone = _test()  # the overall test alone accepts the same frames
    assert _feed(alone, [x for x, _ in frames])[-1] is Verdict.ACCEPT and alone.frames > 40


def test_a_consistent_candidate_is_accepted_once_every_class_seen_has_accepted() -> None:
    assert math.ceil(C_BOUND / -C_AGREE) == 9
    t = _composite()
    verdicts = _feed_classes(t, _cycle(set(), 200))
    # the overall test accepts at frame 26; c9 sees its 9th agreeing frame at frame 90, the last to accept
    assert t.overall.frames == 26 and t.overall.verdict is Verdict.ACCEPT
    assert len(verdicts) == 90 and verdicts[-1] is Verdict.ACCEPT and t.decided_by == "c9"
    assert all(c.verdict is Verdict.ACCEPT and c.frames == 9 for c in t.classes.values())
    assert t.frames == 90 and t.agreement == 1.0
    assert t.confidence == 0.99  # the least sure of the tests that accepted: the overall one


def test_the_overall_test_refuses_first_when_every_class_is_wrong() -> None:
    t = _composite()
    verdicts = _feed_classes(t, _cycle(set(TEN), 200))
    assert len(verdicts) == 10 and verdicts[-1] is Verdict.REFUSE  # crossed at 6, held to min_frames
    assert t.decided_by is None and t.evidence()["decided_by"] == "overall"
    one = _composite()  # all frames of one class: its test crosses at 4 frames, still held to 10
    verdicts = _feed_classes(one, [(0.0, "c0")] * 20)
    assert len(verdicts) == 10 and verdicts[-1] is Verdict.REFUSE and one.decided_by == "c0"


def test_classes_measured_on_too_few_frames_or_without_room_are_skipped() -> None:
    classes = [
        ClassExpectation("ok", 0.9, 10),
        ClassExpectation("few", 0.9, 9),
        ClassExpectation("low", 0.08, 50),
        ClassExpectation("floor", 0.3, 50),
    ]
    t = _composite(classes)
    # p1 = max(p0 - 0.5, 0.01): "low" has p0 0.03 and no room below it; "floor" p0 0.25 and p1 0.01
    assert set(t.classes) == {"ok", "floor"} and set(t.skipped) == {"few", "low"}
    assert "9 frames (< 10)" in t.skipped["few"] and "no room" in t.skipped["low"]
    assert (t.classes["floor"].p0, t.classes["floor"].p1) == (pytest.approx(0.25), pytest.approx(0.01))
    assert t.classes["ok"].alpha == t.classes["ok"].beta == 0.005  # split over the two tested
    raised = _composite(classes, floor=0.5)  # the gates' floor lifts every class's p0
    assert raised.classes["floor"].p0 == 0.5 and "low" in raised.classes
    for label in ("few", None, "unknown"):  # frames of an untested class feed only the overall test
        before = {k: c.frames for k, c in t.classes.items()}
        t.add(0.0, label)
        assert {k: c.frames for k, c in t.classes.items()} == before
    assert t.overall.frames == 3


def test_at_the_frame_limit_each_class_ends_on_its_wilson_bound_unless_it_saw_too_few_frames() -> None:
    # "rare" expected 60 %: p0 0.55, p1 0.05, alpha 0.005 each for two classes; a disagreeing frame adds
    # log(0.95 / 0.45) = 0.747, so 6 of them (4.48) do not cross log(199) = 5.29, but Wilson's upper bound
    # of 0 in 6 at 99.5 % is 0.525 < 0.55
    classes = [ClassExpectation("rare", 0.6, 50), ClassExpectation("common", 1.0, 500)]
    frames = [(1.0, "common")] * 24 + [(0.0, "rare")] * 6
    t = _composite(classes, max_frames=30)
    verdicts = _feed_classes(t, frames)
    assert len(verdicts) == 30 and verdicts[-1] is Verdict.REFUSE and t.decided_by == "rare"
    assert t.classes["rare"].llr < math.log(199.0) and wilson_bounds(0, 6, confidence=0.995)[1] < 0.55
    assert t.overall.verdict is Verdict.ACCEPT  # 80 % over 30 frames: not significantly below 0.9 overall
    # two disagreeing frames of a class expected at 97 % (p0 0.92): the ratio (2 x 1.98) does not cross
    # log(199), and Wilson's bound of 0 in 2 (0.768) is far below the exact one (1 - 0.005 ** 0.5 = 0.929)
    sure = [ClassExpectation("rare", 0.97, 50), ClassExpectation("common", 1.0, 500)]
    frames = [(0.0, "rare")] * 2 + [(1.0, "common")] * 28
    few = _composite(sure, max_frames=30)
    verdicts = _feed_classes(few, frames)
    assert len(verdicts) == 30 and verdicts[-1] is Verdict.ACCEPT  # "rare" blocked acceptance until the limit
    assert few.classes["rare"].verdict is Verdict.CONTINUE and few.classes["rare"].frames == 2
    assert few.evidence()["classes"][0]["decision"] == "continue"
    judged = _composite(sure, max_frames=30, class_min_frames=2)  # with the floor lowered, two frames refuse
    assert _feed_classes(judged, frames)[-1] is Verdict.REFUSE and judged.decided_by == "rare"


def test_composite_evidence_names_the_deciding_test_and_the_worst_classes() -> None:
    t = _composite()
    _feed_classes(t, _cycle({"c9"}, 200))
    ev = t.evidence(rows=3)
    assert (ev["decision"], ev["frames"], ev["decided_by"], ev["decided_class"]) == ("refuse", 40, "class", "c9")
    assert ev["agreement"] == 0.9 and ev["p0"] == 0.9 and ev["classes_tested"] == 10 and ev["classes_skipped"] == 0
    assert ev["overall"]["decision"] == "continue" and ev["overall"]["frames"] == 40
    rows = ev["classes"]
    assert len(rows) == 3 and rows[0]["label"] == "c9" and rows[0]["decision"] == "refuse"
    assert rows[0]["frames"] == 4 and rows[0]["p0"] == 0.92 and rows[0]["p1"] == 0.42 and rows[0]["alpha"] == 0.001
    undecided = _composite()
    assert "decided_by" not in undecided.evidence() and undecided.evidence()["classes"] == []


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ClassAgreementTest(_test(), _classes(), tolerance=0.05, class_effect=1.0), "class_effect"),
        (lambda: ClassAgreementTest(_test(), _classes(), tolerance=0.05, class_min_frames=0), "class_min_frames"),
        (lambda: ClassAgreementTest(_test(), _classes(labels=["a", "a"]), tolerance=0.05), "at most once"),
        (lambda: ClassAgreementTest(_test(), _classes(expected=1.2), tolerance=0.05), r"within \[0, 1\]"),
        (lambda: ClassAgreementTest(_test(), _classes(), tolerance=-0.1), "tolerance"),
    ],
)
def test_bad_composite_parameters_raise(build: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()  # type: ignore[operator]


def test_a_used_overall_test_or_a_bad_frame_raises() -> None:
    used = _test()
    used.add(1.0)
    with pytest.raises(ValueError, match="fresh"):
        ClassAgreementTest(used, _classes(), tolerance=0.05)
    t = _composite()
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        t.add(1.5, "c0")
    assert t.frames == 0 and t.classes["c0"].frames == 0


# ----------------------------------------------------------------------------- regressions and quantile bounds


def test_slowed_down_judges_the_lower_bound_of_after_over_before() -> None:
    rng = np.random.default_rng(0)
    before = rng.lognormal(1.0, 0.3, 150)
    same = slowed_down(before, rng.lognormal(1.0, 0.3, 150), max_ratio=1.5)
    assert not same.regressed and 0.8 < same.interval.low <= same.interval.point <= same.interval.high < 1.25
    slow = slowed_down(before, 3.0 * rng.lognormal(1.0, 0.3, 150), max_ratio=1.5)
    assert slow.regressed and 2.5 < slow.interval.point < 3.5 and slow.interval.low > 1.5
    assert "the lower bound exceeds 1.5x" in slow.reason and slow.to_dict()["after"] == 150
    with pytest.raises(ValueError, match="max_ratio"):
        slowed_down(before, before, max_ratio=0.0)
    with pytest.raises(ValueError, match="at least one"):
        slowed_down([], before, max_ratio=1.5)


def test_quantile_lower_bound_is_an_order_statistic_that_covers_the_true_quantile() -> None:
    # exponential(1): the true p95 is ln 20; the bound must sit at or below it in >= 95 % of samples
    rng = np.random.default_rng(1)
    true_p95 = math.log(20.0)
    trials = 2000
    below = 0
    for _ in range(trials):
        x = rng.exponential(1.0, 200)
        low = quantile_lower_bound(x, 0.95, confidence=0.95)
        assert low is not None and low in x
        below += low <= true_p95
    assert 0.95 <= below / trials <= 0.995  # covers, and is not a trivially low bound


def test_quantile_lower_bound_needs_enough_samples_and_valid_parameters() -> None:
    assert quantile_lower_bound([], 0.95) is None
    assert quantile_lower_bound([5.0, 1.0, 3.0, 2.0, 4.0], 0.95) == 4.0  # the 4th of 5: P(B(5, .95) >= 4) = .977
    assert quantile_lower_bound([1.0], 0.99, confidence=0.995) is None  # P(B(1, .99) >= 1) = .99 < .995
    for bad in ({"q": 0.0}, {"q": 1.0}, {"q": 0.5, "confidence": 1.0}):
        with pytest.raises(ValueError):
            quantile_lower_bound([1.0, 2.0], **bad)  # type: ignore[arg-type]
