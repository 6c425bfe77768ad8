"""The early-halt rule's sample is relative to the stage: a small stage halts on its own failures
even when its success quota is met (so the stage-resolve rule would advance it)."""

from __future__ import annotations

from ota_server.rules import rollouts as ro

STAGES = (1, 10, 50, 100)
REST = [ro.StageCounts(144), ro.StageCounts(640), ro.StageCounts(800)]  # later stages: selected, not started


def _evaluate(first: ro.StageCounts, *, quota: float, min_devices: int = 50) -> ro.Evaluation:
    return ro.evaluate_counts(
        status="active",
        stage=0,
        stages=STAGES,
        counts=[first, *REST],
        success_quota=quota,
        max_failure_rate=0.05,
        min_devices_for_halt=min_devices,
    )


def test_one_failure_in_a_16_device_stage_halts_although_its_quota_is_met() -> None:
    # 15 of 16 succeeded: a 0.9 quota is met (the resolve rule alone would advance), but
    # 1/16 = 6.25 % > 5 % over min(50, 16) = 16 finished devices: the early-halt rule fires
    stage = ro.StageCounts(16, 15, 1, 0, {"NAN_OUTPUT": 1})
    result = _evaluate(stage, quota=0.9)
    assert (result.decision, result.stage) == (ro.Decision.HALT, 0), result
    assert "1/16" in result.detail and "6.25%" in result.detail and "NAN_OUTPUT x1" in result.detail


def test_the_same_stage_without_the_failure_advances() -> None:
    """The control: what the quota alone decides for this stage."""
    result = _evaluate(ro.StageCounts(16, 16, 0), quota=0.9)
    assert (result.decision, result.stage) == (ro.Decision.ADVANCE, 1), result


def test_the_sample_is_the_smaller_of_the_stage_and_the_configured_minimum() -> None:
    # 4 failures of 10 finished in the 16-device stage: below min(50, 16) = 16, not judged yet
    assert _evaluate(ro.StageCounts(16, 6, 4, 6, {"NAN_OUTPUT": 4}), quota=0.9).decision is ro.Decision.NONE
    # with min_devices_for_halt = 10 the same 10 finished devices are enough to halt
    result = _evaluate(ro.StageCounts(16, 6, 4, 6, {"NAN_OUTPUT": 4}), quota=0.9, min_devices=10)
    assert result.decision is ro.Decision.HALT, result


def test_the_full_scan_halts_the_same_16_device_stage() -> None:
    """Through :func:`evaluate` (buckets and outcomes), as the server's full recount does."""
    ids = [f"dev_{i:04d}" for i in range(700)]
    buckets = {d: ro.bucket(d, "ro_halt") for d in ids}
    floor = min(buckets.values())
    stage0 = [d for d in ids if ro.first_stage(buckets[d], STAGES, floor) == 0]
    assert len(stage0) == 16, len(stage0)  # the 1 % stage of these 700 devices (with its floor device)
    outcomes = {d: "success" for d in stage0}
    outcomes[stage0[0]] = "failure"
    quota = (len(stage0) - 1) / len(stage0)  # met by the successes alone
    result = ro.evaluate(
        status="active",
        stage=0,
        stages=STAGES,
        buckets=buckets,
        outcomes=outcomes,
        reasons={stage0[0]: "NAN_OUTPUT"},
        floor=floor,
        success_quota=quota,
        max_failure_rate=0.05,
        min_devices_for_halt=50,
    )
    assert result.decision is ro.Decision.HALT, result
