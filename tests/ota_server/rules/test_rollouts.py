"""Pure rollout rules: cohort hashing, stage membership, advance and halt decisions."""

from __future__ import annotations

import pytest

from ota_server.errors import BadRequest
from ota_server.rules import rollouts as ro


def test_bucket_is_stable_uniform_and_per_rollout() -> None:
    devices = [f"dev_{i:05d}" for i in range(4000)]
    a = [ro.bucket(d, "ro_a") for d in devices]
    assert a == [ro.bucket(d, "ro_a") for d in devices]  # never changes
    assert all(0 <= b < 100 for b in a)
    # roughly uniform: each decile holds 10 % +- 2 %
    for decile in range(10):
        share = sum(decile * 10 <= b < decile * 10 + 10 for b in a) / len(a)
        assert 0.08 < share < 0.12, (decile, share)
    b = [ro.bucket(d, "ro_b") for d in devices]
    assert sum(x < 10 and y < 10 for x, y in zip(a, b, strict=True)) < 0.03 * len(devices)  # independent cohorts


def test_stage_membership_is_cumulative() -> None:
    buckets = {f"d{i}": ro.bucket(f"d{i}", "ro_x") for i in range(1000)}
    sizes = [sum(ro.in_stage(b, pct, None) for b in buckets.values()) for pct in (1, 10, 50, 100)]
    assert sizes == sorted(sizes) and sizes[-1] == 1000
    assert 0 < sizes[0] < 30 and 60 < sizes[1] < 140 and 430 < sizes[2] < 570
    for pct_lo, pct_hi in ((1, 10), (10, 50)):
        lo = {d for d, b in buckets.items() if ro.in_stage(b, pct_lo, None)}
        hi = {d for d, b in buckets.items() if ro.in_stage(b, pct_hi, None)}
        assert lo <= hi


def test_small_fleet_first_stage_gets_at_least_one_device() -> None:
    for n in range(1, 8):
        ids = [f"small{n}_{i}" for i in range(n)]
        floor = ro.floor_of(ids, "ro_small")
        members = [d for d in ids if ro.in_stage(ro.bucket(d, "ro_small"), 1.0, floor)]
        assert len(members) >= 1
        assert len(members) == sum(ro.bucket(d, "ro_small") < 1.0 for d in ids) or len(members) == 1
    assert ro.floor_of([], "ro") is None


def _eval(
    outcomes: dict[str, str],
    *,
    stage: int = 0,
    status: str = "active",
    stages: tuple[float, ...] = (50, 100),
    rate: float = 0.2,
    min_devices: int = 1,
    quota: float = 1.0,
) -> ro.Evaluation:
    buckets = {"a": 10.0, "b": 30.0, "c": 60.0, "d": 90.0}
    return ro.evaluate(
        status=status,
        stage=stage,
        stages=stages,
        buckets=buckets,
        outcomes=outcomes,
        reasons={d: "NAN_OUTPUT" for d in outcomes},
        floor=None,
        success_quota=quota,
        max_failure_rate=rate,
        min_devices_for_halt=min_devices,
    )


@pytest.mark.parametrize(
    ("outcomes", "kwargs", "decision", "stage"),
    [
        ({}, {}, ro.Decision.NONE, 0),
        ({"a": "success"}, {}, ro.Decision.NONE, 0),  # b still pending in stage 0
        ({"a": "success", "b": "success"}, {}, ro.Decision.ADVANCE, 1),
        ({"a": "success"}, {"quota": 0.5}, ro.Decision.ADVANCE, 1),  # 1 of 2 is enough at 50 %
        ({"a": "success", "b": "success", "c": "success", "d": "success"}, {}, ro.Decision.COMPLETE, 1),
        ({"a": "success", "b": "success"}, {"status": "paused"}, ro.Decision.NONE, 0),  # paused: no advance
        ({"a": "failure"}, {}, ro.Decision.HALT, 0),
        ({"a": "failure"}, {"min_devices": 2}, ro.Decision.NONE, 0),  # below the minimum sample
        # stage 0 (a, b) has fully reported and 50 % is not > 50 %: it resolves by advancing
        ({"a": "failure", "b": "success"}, {"min_devices": 2, "rate": 0.5}, ro.Decision.ADVANCE, 1),
        ({"a": "failure", "b": "success", "c": "failure"}, {"min_devices": 2, "rate": 0.5}, ro.Decision.HALT, 0),
        ({"a": "failure"}, {"status": "paused"}, ro.Decision.HALT, 0),  # a paused rollout still halts
        ({"a": "failure"}, {"status": "halted"}, ro.Decision.NONE, 0),
        ({"a": "success", "b": "pending"}, {}, ro.Decision.NONE, 0),
    ],
)
def test_evaluate(outcomes: dict[str, str], kwargs: dict, decision: ro.Decision, stage: int) -> None:
    result = _eval(outcomes, **kwargs)
    assert (result.decision, result.stage) == (decision, stage), result
    if decision is ro.Decision.HALT:
        assert "NAN_OUTPUT" in result.detail


def _counts(devices: int, success: int, failure: int, pending: int = 0) -> ro.StageCounts:
    return ro.StageCounts(devices, success, failure, pending, {"NAN_OUTPUT": failure} if failure else {})


def _eval_counts(
    counts: list[ro.StageCounts],
    *,
    stage: int = 0,
    quota: float = 0.95,
    rate: float = 0.05,
    min_devices: int = 50,
    stages: tuple[float, ...] = (1, 10, 50, 100),
) -> ro.Evaluation:
    return ro.evaluate_counts(
        status="active",
        stage=stage,
        stages=stages,
        counts=counts,
        success_quota=quota,
        max_failure_rate=rate,
        min_devices_for_halt=min_devices,
    )


def test_fully_reported_stage_resolves_instead_of_stalling() -> None:
    rest = [_counts(144, 0, 0), _counts(640, 0, 0), _counts(800, 0, 0)]
    # 15 commits + 1 failure of 16: quota 0.95 not met; 1/16 > 5 % and the stage is done -> halt
    # (min sample is min(50, 16) = 16, so the early-halt rule already fires)
    assert _eval_counts([_counts(16, 15, 1)] + rest).decision is ro.Decision.HALT
    # the same with a 10 % failure budget -> the stage resolves by advancing
    result = _eval_counts([_counts(16, 15, 1)] + rest, rate=0.10)
    assert (result.decision, result.stage) == (ro.Decision.ADVANCE, 1)
    # one device still pending: wait (neither advance nor halt)
    assert _eval_counts([_counts(16, 14, 1, 1)] + rest, rate=0.10).decision is ro.Decision.NONE


def test_min_sample_for_halt_is_relative_to_the_stage_size() -> None:
    rest = [_counts(144, 0, 0), _counts(640, 0, 0), _counts(800, 0, 0)]
    # 2 failures out of 10 finished in a 16-device stage: min(50, 16) = 16 not reached yet
    assert _eval_counts([_counts(16, 8, 2, 6)] + rest).decision is ro.Decision.NONE
    # 3 failures of 16 finished -> halt early, although 16 < min_devices_for_halt = 50
    result = _eval_counts([_counts(16, 13, 3)] + rest)
    assert result.decision is ro.Decision.HALT and "NAN_OUTPUT x3" in result.detail


def test_fully_reported_later_stage_halts_below_the_min_sample() -> None:
    counts = [_counts(1, 1, 0), _counts(9, 8, 1), _counts(40, 0, 0), _counts(50, 0, 0)]
    # stage 1 (10 devices) is fully reported with 1/10 failed > 5 %, below min_devices_for_halt = 50
    result = _eval_counts(counts, stage=1, min_devices=50)
    assert (result.decision, result.stage) == (ro.Decision.HALT, 1)


def test_counts_match_the_full_scan() -> None:
    ids = [f"d{i}" for i in range(500)]
    buckets = {d: ro.bucket(d, "ro_x") for d in ids}
    outcomes = {d: ("success", "failure", "pending")[i % 3] for i, d in enumerate(ids[:300])}
    counts = ro.count_stages((1, 10, 50, 100), buckets, outcomes, min(buckets.values()))
    cum = ro.cumulative(counts)
    assert cum[-1].devices == 500 and cum[-1].success == 100 and cum[-1].failure == 100
    assert cum[-1].reasons == {"UNKNOWN": 100}
    progress = ro.stage_progress((1, 10, 50, 100), buckets, outcomes, min(buckets.values()))
    assert [p.devices for p in progress] == [c.devices for c in cum]
    assert progress[0].devices >= 1


def test_outcome_of_states() -> None:
    assert ro.outcome_of("committed") == "success"
    assert {ro.outcome_of(s) for s in ("failed", "refused", "rolled-back")} == {"failure"}
    assert {ro.outcome_of(s) for s in ("downloading", "health-watch", None)} == {"pending"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], None),
        ({"model": "m"}, "version"),
        ({"model": "m", "version": "1", "group": ""}, "group"),
        ({"model": "m", "version": "1", "stages": []}, "stages"),
        ({"model": "m", "version": "1", "stages": [0, 100]}, "stages[0]"),
        ({"model": "m", "version": "1", "min_devices_for_halt": 0}, "min_devices_for_halt"),
        ({"model": "m", "version": "1", "success_quota": True}, "success_quota"),
        ({"model": "m", "version": "1", "tags": "eu"}, "tags"),
        ({"model": "m", "version": "1", "gates": {"min_agreement": 0.9, "bogus": 1}}, "gates.bogus"),
    ],
)
def test_parse_rollout_rejects(body: object, field: str | None) -> None:
    with pytest.raises(BadRequest) as e:
        ro.parse_rollout(body)
    assert e.value.field == field


def test_an_unknown_gate_name_is_refused_naming_the_gates_a_rollout_may_override() -> None:
    with pytest.raises(BadRequest) as e:
        ro.parse_rollout({"model": "m", "version": "1", "gates": {"min_agreement": 0.9, "bogus": 1, "also": 2}})
    assert e.value.field == "gates.also"  # the first in sorted order
    assert str(e.value).startswith("unknown gate 'also'; a rollout may override [")
    assert "'min_agreement'" in str(e.value) and "'bogus'" not in str(e.value).split(";", 1)[1]


def test_parse_rollout_defaults() -> None:
    spec = ro.parse_rollout({"model": "m", "version": "1.0.0"})
    assert spec.stages == (1.0, 10.0, 50.0, 100.0) and spec.group == "default" and spec.max_failure_rate == 0.05


def test_selection_by_tags_and_hardware_class() -> None:
    dev = {"tags": ["eu", "night"], "hardware_class": "jetson-orin"}
    assert ro.is_selected(dev, tags=[], hardware_classes=[])
    assert ro.is_selected(dev, tags=["eu"], hardware_classes=["jetson-orin", "cuda"])
    assert not ro.is_selected(dev, tags=["eu", "us"], hardware_classes=[])  # every tag is required
    assert not ro.is_selected(dev, tags=[], hardware_classes=["cpu-x86_64"])


def test_gate_overrides_may_only_tighten_the_bundles_gates() -> None:
    from models.bundle import GATE_STRICTER, Gates

    bundle = Gates(latency_budget_ms=50.0, min_agreement=0.8, health_window_s=30.0)
    ro.check_gates_tighten(bundle, {"latency_budget_ms": 20.0, "min_agreement": 0.9, "health_window_s": 60.0})
    ro.check_gates_tighten(bundle, {"latency_budget_ms": 50.0})  # equal is not looser
    for name, looser in (("latency_budget_ms", 51.0), ("min_agreement", 0.5), ("health_window_s", 0.0)):
        with pytest.raises(BadRequest) as e:
            ro.check_gates_tighten(bundle, {name: looser})
        assert e.value.field == f"gates.{name}"
    with pytest.raises(BadRequest) as e:
        ro.check_gates_tighten(bundle, {"min_agreement": 2})
    assert e.value.field == "gates.min_agreement"
    # every gate has a direction; tightened_by keeps the stricter side of each
    assert set(GATE_STRICTER) == set(Gates.__dataclass_fields__)
    merged = bundle.tightened_by({"latency_budget_ms": 1e9, "min_agreement": 0.95, "max_error_rate": 1.0})
    assert (merged.latency_budget_ms, merged.min_agreement, merged.max_error_rate) == (50.0, 0.95, 0.01)
