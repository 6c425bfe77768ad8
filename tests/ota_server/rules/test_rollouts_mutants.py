"""The rollout rules, pinned down where mutation testing found them loose.

Each validation names its field and says what came; the bounds of every number are inclusive
where the docs say so; a device's bucket is the documented hash exactly; assignment needs every
condition at once; per-stage progress carries each counter in its place; halt and advance
details say the figures they were decided on.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from models.bundle import Gates
from models.reasons import ReasonCode
from ota_server.errors import BadRequest
from ota_server.rules import rollouts as ro


def bad(body: Any) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        ro.parse_rollout(body)
    return info.value


def rollout(**over: Any) -> dict[str, Any]:
    return {"model": "m", "version": "1", **over}


# ----------------------------------------------------------------------------- parse_rollout


def test_a_full_request_is_parsed_field_by_field() -> None:
    spec = ro.parse_rollout(
        rollout(
            group="eu",
            tags=["night"],
            hardware_classes=["cpu-x86_64"],
            stages=[5, 100],
            max_failure_rate=0.1,
            success_quota=0.9,
            min_devices_for_halt=3,
            gates={"latency_budget_ms": 20.0},
        )
    )
    assert spec == ro.RolloutSpec(
        model="m",
        version="1",
        group="eu",
        tags=("night",),
        hardware_classes=("cpu-x86_64",),
        stages=(5.0, 100.0),
        max_failure_rate=0.1,
        success_quota=0.9,
        min_devices_for_halt=3,
        gates={"latency_budget_ms": 20.0},
    )


def test_defaults_stand_in_for_absent_or_null_numbers() -> None:
    spec = ro.parse_rollout(rollout(max_failure_rate=None, success_quota=None, tags=None, gates=None))
    assert (spec.max_failure_rate, spec.success_quota, spec.tags, spec.gates) == (0.05, 1.0, (), {})
    assert (spec.hardware_classes, spec.min_devices_for_halt, spec.stages) == ((), 1, ro.DEFAULT_STAGES)
    assert isinstance(spec.max_failure_rate, float) and isinstance(spec.stages[0], float)


@pytest.mark.parametrize("key", ["max_failure_rate", "success_quota"])
@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 0.5])
def test_a_share_may_be_anything_from_zero_to_one_inclusive(key: str, value: float) -> None:
    parsed = getattr(ro.parse_rollout(rollout(**{key: value})), key)
    assert parsed == value and isinstance(parsed, float)


@pytest.mark.parametrize("key", ["max_failure_rate", "success_quota"])
@pytest.mark.parametrize("value", [-0.01, 1.01, True, False, "0.5", [0.5]])
def test_a_share_out_of_range_or_of_another_type_is_refused_saying_the_range(key: str, value: Any) -> None:
    e = bad(rollout(**{key: value}))
    assert e.field == key
    assert f"{key} must be a number within [0.0, 1.0], got {value!r}" == e.message


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ("text", None, "expected a JSON object"),
        (rollout(color="red", alpha=1), "alpha", "unknown fields ['alpha', 'color']; known fields are"),
        ({"version": "1"}, "model", "model is required (a string)"),
        ({"model": "", "version": "1"}, "model", "model is required (a string)"),
        ({"model": "m", "version": 1}, "version", "version is required (a string)"),
        (rollout(group=3), "group", "group must be a non-empty string, got 3"),
        (rollout(tags=["a", 1]), "tags", "tags must be a list of strings, got ['a', 1]"),
        (rollout(hardware_classes="cpu"), "hardware_classes", "hardware_classes must be a list of strings"),
        (rollout(hardware_classes=["cpu-x86_64", "toaster"]), "hardware_classes[1]", "got 'toaster'"),
        (rollout(gates=[1]), "gates", "gates must be an object"),
        (rollout(gates={"latency_budget_ms": -1}), "gates.latency_budget_ms", "invalid gates: "),
        (rollout(min_devices_for_halt=True), "min_devices_for_halt", "must be an integer >= 1, got True"),
        (rollout(min_devices_for_halt=2.0), "min_devices_for_halt", "must be an integer >= 1, got 2.0"),
        (rollout(min_devices_for_halt=0), "min_devices_for_halt", "must be an integer >= 1, got 0"),
    ],
)
def test_a_bad_request_names_its_field_and_says_what_came(body: Any, field: str | None, message: str) -> None:
    e = bad(body)
    assert e.field == field
    assert message in e.message


def test_gate_overrides_without_a_latency_budget_are_valid_on_their_own() -> None:
    """The bundle's latency budget is not known here: overrides are validated against a stand-in."""
    assert ro.parse_rollout(rollout(gates={"min_agreement": 0.9})).gates == {"min_agreement": 0.9}
    assert ro.parse_rollout(rollout(gates={})).gates == {}


def test_the_unknown_fields_message_lists_the_known_ones() -> None:
    e = bad(rollout(color="red"))
    assert e.message == f"unknown fields ['color']; known fields are {sorted(ro.RolloutSpec.__dataclass_fields__)}"


def test_a_hardware_class_must_be_one_of_the_known_ones() -> None:
    from models.hardware import HARDWARE_CLASSES

    e = bad(rollout(hardware_classes=["toaster"]))
    assert e.message == f"must be one of {list(HARDWARE_CLASSES)}, got 'toaster'"
    assert ro.parse_rollout(rollout(hardware_classes=list(HARDWARE_CLASSES))).hardware_classes == HARDWARE_CLASSES


def test_one_device_is_the_smallest_halt_sample() -> None:
    assert ro.parse_rollout(rollout(min_devices_for_halt=1)).min_devices_for_halt == 1


# ----------------------------------------------------------------------------- parse_stages


@pytest.mark.parametrize("stages", [[100], [0.5, 100], [1, 10, 50, 100], [99.9, 100.0]])
def test_increasing_stages_ending_at_100_are_accepted(stages: list[float]) -> None:
    assert ro.parse_stages(stages) == tuple(float(s) for s in stages)


@pytest.mark.parametrize(
    ("stages", "field", "message"),
    [
        ([], "stages", "stages must be a non-empty list of percentages, got []"),
        ("1,100", "stages", "stages must be a non-empty list of percentages, got '1,100'"),
        ([0, 100], "stages[0]", "every stage must be a percentage in (0, 100], got 0"),
        ([True, 100], "stages[0]", "every stage must be a percentage in (0, 100], got True"),
        ([10, "50", 100], "stages[1]", "every stage must be a percentage in (0, 100], got '50'"),
        ([10, 100.5], "stages[1]", "every stage must be a percentage in (0, 100], got 100.5"),
        ([10, 101], "stages[1]", "every stage must be a percentage in (0, 100], got 101"),
        ([-5, 100], "stages[0]", "every stage must be a percentage in (0, 100], got -5"),
        ([10, 10, 100], "stages[1]", "stages must increase strictly"),
        ([10, 50, 20, 100], "stages[2]", "stages must increase strictly"),
        ([10, 50], "stages", "the last stage must be 100, got 50"),
        ([10, 50, 99.5], "stages", "the last stage must be 100, got 99.5"),
    ],
)
def test_bad_stages_name_the_stage_and_say_why(stages: Any, field: str, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        ro.parse_stages(stages)
    assert info.value.field == field
    assert info.value.message == message


def test_stages_arrive_through_the_request_too() -> None:
    assert bad(rollout(stages=[50, 40, 100])).field == "stages[1]"


# ----------------------------------------------------------------------------- gates


def test_a_loosening_override_is_refused_naming_the_gate_and_both_values() -> None:
    with pytest.raises(BadRequest) as info:
        ro.check_gates_tighten(Gates(latency_budget_ms=50.0), {"latency_budget_ms": 80.0})
    assert info.value.field == "gates.latency_budget_ms"
    assert info.value.message == (
        "gates.latency_budget_ms 80.0 loosens the bundle's 50.0; a rollout may only tighten the bundle's gates"
    )


def test_an_invalid_override_says_so() -> None:
    with pytest.raises(BadRequest) as info:
        ro.check_gates_tighten(Gates(latency_budget_ms=50.0), {"latency_budget_ms": "fast"})
    assert info.value.field == "gates.latency_budget_ms"
    assert info.value.message.startswith("invalid gates: ")


# ----------------------------------------------------------------------------- cohorts


def test_a_bucket_is_the_first_eight_bytes_of_the_documented_hash_scaled_to_100() -> None:
    digest = hashlib.sha256(b"ro_1:dev_1").digest()
    assert ro.bucket("dev_1", "ro_1") == int.from_bytes(digest[:8], "big") / 2**64 * 100.0
    assert ro.bucket("dev_1", "ro_1") != ro.bucket("ro_1", "dev_1")


def test_stage_membership_is_below_the_percentage_or_up_to_the_floor() -> None:
    assert ro.in_stage(9.99, 10.0, None) and not ro.in_stage(10.0, 10.0, None)
    assert ro.in_stage(30.0, 10.0, 30.0) and not ro.in_stage(30.01, 10.0, 30.0)
    assert ro.in_stage(0.0, 1.0, 0.0)


def test_the_floor_is_the_lowest_bucket() -> None:
    ids = ["a", "b", "c"]
    assert ro.floor_of(ids, "ro_1") == min(ro.bucket(d, "ro_1") for d in ids)


def test_selection_needs_every_tag_including_all_of_them_and_any_hardware_class() -> None:
    dev = {"tags": ["eu", "night"], "hardware_class": "cpu-x86_64"}
    assert ro.is_selected(dev, tags=["eu", "night"], hardware_classes=[])  # exactly its tags
    assert not ro.is_selected({"hardware_class": "cpu-x86_64"}, tags=["eu"], hardware_classes=[])
    assert not ro.is_selected({"tags": None}, tags=["eu"], hardware_classes=[])
    assert ro.is_selected({}, tags=[], hardware_classes=[])
    assert not ro.is_selected({}, tags=[], hardware_classes=["cpu-x86_64"])


def _rollout(**over: Any) -> dict[str, Any]:
    r = {
        "id": "ro_1",
        "status": "active",
        "group_name": "default",
        "tags": ["eu"],
        "hardware_classes": ["cpu-x86_64"],
        "stages": [50.0, 100.0],
        "stage": 0,
        "floor_bucket": None,
    }
    r.update(over)
    return r


def _device(name: str, **over: Any) -> dict[str, Any]:
    d = {"id": name, "group_name": "default", "tags": ["eu"], "hardware_class": "cpu-x86_64"}
    d.update(over)
    return d


def _devices_by_bucket() -> tuple[str, str]:
    """A device in the first half of ro_1's buckets and one in the second."""
    low = next(f"d{i}" for i in range(100) if ro.bucket(f"d{i}", "ro_1") < 50)
    high = next(f"d{i}" for i in range(100) if ro.bucket(f"d{i}", "ro_1") >= 50)
    return low, high


def test_a_rollout_assigns_only_when_every_condition_holds() -> None:
    low, high = _devices_by_bucket()
    assert ro.assigns(_rollout(), _device(low))
    assert ro.assigns(_rollout(status="completed"), _device(low))
    assert not ro.assigns(_rollout(), _device(high))  # not in stage 0
    assert ro.assigns(_rollout(stage=1), _device(high))
    assert ro.assigns(_rollout(floor_bucket=ro.bucket(high, "ro_1")), _device(high))  # the floor pins it in
    for status in ("paused", "halted", "aborted", "rolled-back", "superseded"):
        assert not ro.assigns(_rollout(status=status), _device(low)), status
    assert not ro.assigns(_rollout(), _device(low, group_name="other"))
    assert not ro.assigns(_rollout(), _device(low, tags=["us"]))
    assert not ro.assigns(_rollout(), _device(low, hardware_class="jetson-orin"))


# ----------------------------------------------------------------------------- counters and progress


def test_adding_counters_adds_each_and_drops_reasons_that_cancel() -> None:
    a = ro.StageCounts(3, 1, 1, 1, {"NAN_OUTPUT": 1})
    b = ro.StageCounts(5, 2, 2, 0, {"NAN_OUTPUT": -1, "LOW_AGREEMENT": 2})
    assert a + b == ro.StageCounts(8, 3, 3, 1, {"LOW_AGREEMENT": 2})


def test_a_bucket_beyond_every_stage_counts_in_the_last() -> None:
    assert ro.first_stage(99.0, [10.0, 50.0], None) == 1
    assert ro.first_stage(5.0, [10.0, 50.0], None) == 0
    assert ro.first_stage(20.0, [10.0, 50.0, 100.0], 20.0) == 0


def test_progress_carries_each_counter_in_its_place_with_reasons_most_common_first() -> None:
    counts = [ro.StageCounts(4, 1, 2, 1, {"A": 1, "B": 2}), ro.StageCounts(6, 3, 1, 1, {"C": 1})]
    assert ro.progress_of((50.0, 100.0), counts) == [
        ro.StageProgress(0, 50.0, 4, 1, 2, 1, {"B": 2, "A": 1}),
        ro.StageProgress(1, 100.0, 10, 4, 3, 2, {"B": 2, "A": 1, "C": 1}),
    ]
    assert list(ro.progress_of((50.0, 100.0), counts)[0].failure_reasons) == ["B", "A"]


def test_stages_and_counters_of_different_lengths_are_an_error() -> None:
    with pytest.raises(ValueError):
        ro.progress_of((50.0, 100.0), [ro.StageCounts(1)])


def test_stage_progress_uses_the_floor_and_the_reasons() -> None:
    buckets = {"a": 70.0, "b": 80.0}
    progress = ro.stage_progress((50.0, 100.0), buckets, {"a": "failure", "b": "failure"}, 70.0, {"a": "NAN_OUTPUT"})
    assert progress[0] == ro.StageProgress(0, 50.0, 1, 0, 1, 0, {"NAN_OUTPUT": 1})
    assert progress[1] == ro.StageProgress(1, 100.0, 2, 0, 2, 0, {"NAN_OUTPUT": 1, "UNKNOWN": 1})


def test_count_stages_counts_only_known_outcomes_and_failure_reasons() -> None:
    counts = ro.count_stages(
        (100.0,),
        {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0},
        {"a": "success", "b": "failure", "c": "pending", "d": "bogus"},
        None,
        {"b": ReasonCode.NAN_OUTPUT, "a": ReasonCode.LOW_AGREEMENT},
    )
    assert counts == [ro.StageCounts(4, 1, 1, 1, {"NAN_OUTPUT": 1})]


def test_reason_keys() -> None:
    assert ro.reason_key(None) == ro.NO_REASON == "UNKNOWN"
    assert ro.reason_key(ReasonCode.NAN_OUTPUT) == "NAN_OUTPUT"
    assert ro.reason_key("STORED_CODE") == "STORED_CODE"


# ----------------------------------------------------------------------------- evaluate


def _ev(counts: list[ro.StageCounts], **over: Any) -> ro.Evaluation:
    kw: dict[str, Any] = {
        "status": "active",
        "stage": 0,
        "stages": (50.0, 100.0),
        "counts": counts,
        "success_quota": 1.0,
        "max_failure_rate": 0.2,
        "min_devices_for_halt": 1,
    }
    kw.update(over)
    return ro.evaluate_counts(**kw)


def test_an_early_halt_says_the_rate_the_limit_and_the_top_three_reasons() -> None:
    reasons = {"A": 4, "B": 3, "C": 2, "D": 1}
    result = _ev([ro.StageCounts(20, 2, 10, 8, reasons), ro.StageCounts(10)])
    assert result == ro.Evaluation(ro.Decision.HALT, 0, "failure rate 10/12 = 83.3% exceeds 20% (A x4, B x3, C x2)")


def test_a_resolved_stage_halts_saying_its_own_figures() -> None:
    # stage 1's cohort: 10 devices, 8 succeeded, 2 failed = 20 % > 15 %; over the whole rollout
    # (10 more devices of stage 2 already succeeded) 2/20 = 10 %, so the early rule does not fire
    counts = [ro.StageCounts(2, 2, 0), ro.StageCounts(8, 6, 2, 0, {"NAN_OUTPUT": 2}), ro.StageCounts(10, 10, 0)]
    result = _ev(counts, stage=1, stages=(10.0, 50.0, 100.0), max_failure_rate=0.15)
    assert result == ro.Evaluation(
        ro.Decision.HALT, 1, "stage 1 finished with 2/10 failed = 20%, over 15% (NAN_OUTPUT x2)"
    )


def test_advance_and_complete_say_where_they_went() -> None:
    assert _ev([ro.StageCounts(2, 2, 0), ro.StageCounts(2)]) == ro.Evaluation(ro.Decision.ADVANCE, 1, "stage 1 (100%)")
    assert _ev([ro.StageCounts(2, 2, 0), ro.StageCounts(2, 2, 0)]) == ro.Evaluation(
        ro.Decision.COMPLETE, 1, "4/4 devices succeeded"
    )


def test_several_finished_stages_are_passed_in_one_evaluation() -> None:
    counts = [ro.StageCounts(2, 2, 0), ro.StageCounts(2, 2, 0), ro.StageCounts(2, 2, 0), ro.StageCounts(4)]
    result = _ev(counts, stages=(10.0, 30.0, 60.0, 100.0))
    assert result == ro.Evaluation(ro.Decision.ADVANCE, 3, "stage 3 (100%)")


def test_an_empty_stage_waits_for_devices() -> None:
    assert _ev([ro.StageCounts(), ro.StageCounts(3)]) == ro.Evaluation(ro.Decision.NONE, 0)


def test_a_quota_is_met_at_exactly_its_share() -> None:
    # 0.7 * 10 = 7.000000000000001 in floating point: 7 successes meet a 70 % quota
    assert _ev([ro.StageCounts(10, 7, 0, 3), ro.StageCounts(10)], success_quota=0.7).decision is ro.Decision.ADVANCE
    assert _ev([ro.StageCounts(10, 6, 0, 4), ro.StageCounts(10)], success_quota=0.7).decision is ro.Decision.NONE


def test_a_failure_rate_at_the_limit_does_not_halt() -> None:
    # 1 of 5 finished failed = 20 %, the limit: not over it
    assert _ev([ro.StageCounts(5, 4, 1), ro.StageCounts(5)]).decision is ro.Decision.ADVANCE


def test_the_early_halt_sample_is_the_stage_size_when_that_is_smaller() -> None:
    # stage 0 has 2 devices, one failed and one pending; min_devices_for_halt 5: min(5, 2) = 2 not reached
    assert _ev([ro.StageCounts(2, 0, 1, 1), ro.StageCounts(8)], min_devices_for_halt=5).decision is ro.Decision.NONE
    # both finished (1 failed): 2 >= min(5, 2): halt
    assert _ev([ro.StageCounts(2, 1, 1), ro.StageCounts(8)], min_devices_for_halt=5).decision is ro.Decision.HALT


def test_an_empty_current_stage_takes_the_configured_sample() -> None:
    # no device in stage 0: the sample is min_devices_for_halt itself, over the whole rollout
    counts = [ro.StageCounts(), ro.StageCounts(4, 0, 2, 2)]
    assert _ev(counts, min_devices_for_halt=3).decision is ro.Decision.NONE
    assert _ev(counts, min_devices_for_halt=2).decision is ro.Decision.HALT


@pytest.mark.parametrize("status", ["halted", "completed", "aborted", "rolled-back", "superseded"])
def test_a_rollout_that_is_not_running_is_left_alone(status: str) -> None:
    assert _ev([ro.StageCounts(2, 0, 2), ro.StageCounts(2)], status=status) == ro.Evaluation(ro.Decision.NONE, 0)


def test_evaluate_counts_from_buckets_with_the_floor() -> None:
    result = ro.evaluate(
        status="active",
        stage=0,
        stages=(10.0, 100.0),
        buckets={"a": 60.0, "b": 70.0},
        outcomes={"a": "success"},
        reasons={},
        floor=60.0,  # a is pinned into stage 0
        success_quota=1.0,
        max_failure_rate=0.2,
        min_devices_for_halt=1,
    )
    assert result == ro.Evaluation(ro.Decision.ADVANCE, 1, "stage 1 (100%)")


def test_evaluate_passes_the_reasons_through() -> None:
    result = ro.evaluate(
        status="active",
        stage=0,
        stages=(100.0,),
        buckets={"a": 1.0},
        outcomes={"a": "failure"},
        reasons={"a": ReasonCode.NAN_OUTPUT},
        floor=None,
        success_quota=1.0,
        max_failure_rate=0.2,
        min_devices_for_halt=1,
    )
    assert result.decision is ro.Decision.HALT and "(NAN_OUTPUT x1)" in result.detail


def test_outcomes_of_every_state() -> None:
    assert [ro.outcome_of(s) for s in ("committed", "failed", "refused", "rolled-back", "staged", None)] == [
        "success",
        "failure",
        "failure",
        "failure",
        "pending",
        "pending",
    ]


def test_a_body_or_gates_that_is_not_an_object_says_so_exactly() -> None:
    assert bad(["model"]).message == "expected a JSON object"
    assert bad(rollout(gates=[1])).message == "gates must be an object"
