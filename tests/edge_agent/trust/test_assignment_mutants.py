"""The assignment checks, pinned down where mutation testing found them loose.

Boundaries (the expiry instant, the alternates and director-key limits), what each refusal says
(the device, the counters, the path: an operator reads these in refusal reports), how the
optional fields of the signed body are parsed, and the exact values an accepted assignment
carries. Real Ed25519 keys; the helpers are those of ``test_assignment.py``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge_agent.errors import ConfigError, FatalError, ReasonCode
from edge_agent.trust.assignment import (
    DIRECTOR_TARGET,
    MAX_ALTERNATES,
    MAX_DIRECTOR_KEYS,
    AssignedTarget,
    Assignment,
    DirectorKey,
    TargetRef,
    claimed_of,
    director_keys,
    match_target,
    parse_time,
)
from models.bundle import canonical_json
from tests.edge_agent.trust.test_assignment import (
    ALT_CUSTOM,
    CUSTOM,
    KEY,
    KEY_DICT,
    NOW,
    PRIV,
    alternate,
    envelope,
    signed_body,
    verify,
)

R = ReasonCode


def refusal(env: Any, **over: Any) -> FatalError:
    with pytest.raises(FatalError) as info:
        verify(env, **over)
    return info.value


def key_dict(private: Ed25519PrivateKey) -> dict[str, Any]:
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    return {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": public}}


# ----------------------------------------------------------------------------- data classes


def test_a_target_ref_round_trips_through_its_dict_exactly() -> None:
    ref = TargetRef(path="tiny/1.1.0/model.onnx", length=4000, sha256="2" * 64)
    assert ref.to_dict() == {"path": "tiny/1.1.0/model.onnx", "length": 4000, "sha256": "2" * 64}
    assert TargetRef.from_dict({"path": "p", "length": "12", "sha256": "s"}) == TargetRef("p", 12, "s")
    assert TargetRef.from_dict(ref.to_dict()) == ref


def test_the_primary_target_carries_the_assignments_variant_hashes_and_custom_fields() -> None:
    a = verify(envelope(signed_body(alternates=[alternate()])))
    primary = a.targets()[0]
    assert primary == AssignedTarget("onnx-fp32", a.target, {"sha256": "2" * 64}, CUSTOM)
    assert len(a.targets()) == 2


def test_a_primary_without_a_variant_id_is_named_by_the_empty_string() -> None:
    ref = TargetRef("m.onnx", 1, "2" * 64)
    a = Assignment("d", "n", NOW, None, 1, "b", "1", None, ref, None, {"sha256": "2" * 64}, custom={"k": 1})
    assert a.targets() == (AssignedTarget("", ref, {"sha256": "2" * 64}, {"k": 1}),)


# ----------------------------------------------------------------------------- director keys


def test_a_director_keys_id_is_the_sha256_of_its_public_bytes_and_it_verifies_only_its_signatures() -> None:
    public = PRIV.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert KEY.public == public and KEY.keyid == hashlib.sha256(public).hexdigest()
    assert KEY.verify(PRIV.sign(b"message"), b"message") is True
    assert KEY.verify(PRIV.sign(b"message"), b"other") is False
    assert KEY.verify(Ed25519PrivateKey.generate().sign(b"message"), b"message") is False


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("text", "must be a JSON object, got str"),
        ({"keytype": "rsa"}, "keytype must be 'ed25519', got 'rsa'"),
        ({"keyval": {}}, "keytype must be 'ed25519', got None"),
        ({"keytype": "ed25519"}, "keyval.public must be hex"),
        ({"keytype": "ed25519", "keyval": "x"}, "keyval.public must be hex"),
        ({"keytype": "ed25519", "keyval": {"public": "zz"}}, "keyval.public must be hex"),
        ({"keytype": "ed25519", "keyval": {"public": "00" * 31}}, "must be 32 bytes, got 31"),
        ({"keytype": "ed25519", "keyval": {"public": "00" * 33}}, "must be 32 bytes, got 33"),
    ],
)
def test_a_bad_director_key_says_what_is_wrong(bad: Any, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        DirectorKey.from_dict(bad)
    assert words in str(info.value)


def _listing(keys: list[Any], kind: str = "director") -> dict[str, Any]:
    return {"edgefleet": {"kind": kind, "keys": keys}}


def test_director_keys_are_tufs_list_or_the_pinned_key_when_tuf_lists_none() -> None:
    assert director_keys(None, pinned=KEY) == (KEY,)
    other = Ed25519PrivateKey.generate()
    keys = director_keys(_listing([key_dict(other), KEY_DICT]), pinned=KEY)
    assert [k.public for k in keys] == [DirectorKey.from_dict(key_dict(other)).public, KEY.public]
    full = [key_dict(Ed25519PrivateKey.generate()) for _ in range(MAX_DIRECTOR_KEYS)]
    assert len(director_keys(_listing(full), pinned=KEY)) == MAX_DIRECTOR_KEYS


@pytest.mark.parametrize(
    "custom",
    [
        {},
        {"edgefleet": "x"},
        {"edgefleet": {"keys": [KEY_DICT]}},  # no kind
        _listing([KEY_DICT], kind="variant"),
        _listing([]),
        {"edgefleet": {"kind": "director", "keys": KEY_DICT}},
        _listing([KEY_DICT] * (MAX_DIRECTOR_KEYS + 1)),
    ],
)
def test_a_listing_that_is_not_a_valid_key_list_is_refused(custom: dict[str, Any]) -> None:
    with pytest.raises(FatalError) as info:
        director_keys(custom, pinned=KEY)
    assert info.value.reason is R.SIGNATURE_INVALID
    assert f"TUF target {DIRECTOR_TARGET} lists no valid director keys" in str(info.value)


def test_a_listed_key_that_is_malformed_is_refused_naming_the_target_and_the_fault() -> None:
    with pytest.raises(FatalError) as info:
        director_keys(_listing([{"keytype": "rsa"}]), pinned=KEY)
    assert info.value.reason is R.SIGNATURE_INVALID
    assert f"TUF target {DIRECTOR_TARGET}: director key keytype" in str(info.value)
    assert isinstance(info.value.__cause__, ConfigError)


# ----------------------------------------------------------------------------- small parsers


def test_parse_time_reads_z_and_offsets_and_takes_a_naive_time_as_utc() -> None:
    assert parse_time("2026-11-27T10:00:00Z", where="w") == NOW
    assert parse_time("2026-11-27T11:00:00+01:00", where="w") == NOW
    naive = parse_time("2026-11-27T10:00:00", where="w")
    assert naive == NOW and naive.tzinfo is timezone.utc
    with pytest.raises(FatalError) as info:
        parse_time("tomorrow", where="expires")
    assert info.value.reason is R.SIGNATURE_INVALID
    assert "expires is not an ISO-8601 time: 'tomorrow'" in str(info.value)


@pytest.mark.parametrize(
    ("env", "claimed"),
    [
        ({"signed": {"rollout_id": "ro", "release": {"counter": 3}}}, {"rollout_id": "ro", "release": 3}),
        ({"signed": {"rollout_id": "ro", "release": {"counter": "3"}}}, {"rollout_id": "ro", "release": None}),
        ({"signed": {"rollout_id": "ro", "release": [3]}}, {"rollout_id": "ro", "release": None}),
        ({"signed": {"release": {"counter": 3}}}, {"rollout_id": None, "release": 3}),
        ({"signed": "x"}, {}),
        (["signed"], {}),
    ],
)
def test_claimed_of_takes_only_what_has_the_right_shape(env: Any, claimed: dict[str, Any]) -> None:
    assert claimed_of(env) == claimed


# ----------------------------------------------------------------------------- the envelope


def test_a_later_good_signature_counts_after_unreadable_ones() -> None:
    env = envelope(signed_body())
    good = env["signatures"][0]
    env["signatures"] = [{"keyid": "x"}, {"sig": None}, {"sig": "zz"}, "text", good]
    assert verify(env).release == 5


def test_any_of_several_director_keys_may_sign() -> None:
    other = DirectorKey.from_dict(key_dict(Ed25519PrivateKey.generate()))
    assert verify(envelope(signed_body()), key=[other, KEY]).release == 5
    assert verify(envelope(signed_body()), key=(KEY,)).release == 5


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"signed": "x", "signatures": []}, "not a {signed, signatures} envelope"),
        ({"signed": signed_body()}, "carries no signatures"),
        ({"signed": signed_body(), "signatures": {"sig": "00"}}, "carries no signatures"),
        ({"signed": {**signed_body(), "name": "\ud800"}, "signatures": []}, "not valid UTF-8 JSON"),
    ],
)
def test_a_bad_envelope_says_what_is_wrong(env: Any, words: str) -> None:
    e = refusal(env)
    assert e.reason is R.SIGNATURE_INVALID and words in str(e)


def test_a_signature_no_key_verifies_names_the_keys_tried() -> None:
    e = refusal(envelope(signed_body(), Ed25519PrivateKey.generate()))
    assert e.reason is R.SIGNATURE_INVALID
    assert f"no signature verifies with the director keys {KEY.keyid[:12]}" in str(e)
    assert e.claimed == {"rollout_id": "ro_1", "release": 5}


def test_refusals_name_what_was_expected_and_what_came() -> None:
    assert "signed _type is 'root'" in str(refusal(envelope(signed_body(_type="root"))))
    wrong = refusal(envelope(signed_body(device_id="dev_2")))
    assert "assignment is for 'dev_2', this device is 'dev_1'" in str(wrong)
    assert wrong.claimed == {"rollout_id": "ro_1", "release": 5}
    assert "another nonce" in str(refusal(envelope(signed_body(nonce="cd" * 16))))
    expired = refusal(envelope(signed_body()), now=NOW + timedelta(hours=1))
    assert expired.reason is R.ASSIGNMENT_EXPIRED and "expired at 2026-11-27T11:00:00Z" in str(expired)
    lower = refusal(envelope(signed_body()), highest_release=6)
    assert "release counter 5 is below 6, the highest accepted" in str(lower)


def test_an_assignment_is_valid_until_the_instant_it_expires() -> None:
    assert verify(envelope(signed_body()), now=NOW + timedelta(minutes=59, seconds=59)).release == 5
    assert refusal(envelope(signed_body()), now=NOW + timedelta(hours=1)).reason is R.ASSIGNMENT_EXPIRED


# ----------------------------------------------------------------------------- the signed body


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"rollout_id": 7}, "rollout_id must be a string"),
        ({"release": [5]}, "release must be an object, got list"),
        ({"gates": "fast"}, "gates must be an object, got str"),
        ({"target": {**signed_body()["target"], "custom": ["x"]}}, "target.custom must be an object, got list"),
        ({"release": {"counter": 5, "name": 1, "version": "1.1.0"}}, "release.name must be a string"),
        ({"release": {"counter": 5, "name": "tiny", "version": 110}}, "release.version must be a string"),
        ({"release": {"counter": True, "name": "tiny", "version": "1.1.0"}}, "needs a release counter"),
        ({"release": {"counter": "5", "name": "tiny", "version": "1.1.0"}}, "needs a release counter"),
        ({"manifest": None}, "a target needs a release counter and a manifest"),
        ({"target": {**signed_body()["target"], "variant": ""}}, "target.variant must be a variant id, got ''"),
        ({"target": {**signed_body()["target"], "variant": 3}}, "target.variant must be a variant id, got 3"),
        ({"target": {**signed_body()["target"], "length": 0}}, "target has a bad length"),
        ({"target": {**signed_body()["target"], "length": -4}}, "target has a bad length"),
        ({"manifest": {"path": "m", "length": 1, "hashes": {"md5": "x"}}}, "manifest is malformed"),
        ({"manifest": {"path": "m", "length": float("inf"), "hashes": {"sha256": "1" * 64}}}, "manifest is malformed"),
        ({"manifest": {"path": "m", "length": 1, "hashes": None}}, "manifest is malformed"),
        ({"manifest": {"path": "m", "length": None, "hashes": {"sha256": "1" * 64}}}, "manifest is malformed"),
    ],
)
def test_a_malformed_field_is_refused_naming_it(over: dict[str, Any], words: str) -> None:
    env = envelope(signed_body(**over))
    e = refusal(env)
    assert e.reason is R.TARGET_MISMATCH
    assert words in str(e)
    assert e.claimed and e.claimed == claimed_of(env)  # the refusal report says what it claimed


def test_a_length_of_one_is_the_smallest_accepted() -> None:
    a = verify(envelope(signed_body(manifest={"path": "m", "length": 1, "hashes": {"sha256": "1" * 64}})))
    assert a.manifest == TargetRef("m", 1, "1" * 64)


def test_an_accepted_assignment_carries_exactly_what_was_signed() -> None:
    signed = signed_body(alternates=[alternate()])
    a = verify(envelope(signed))
    assert (a.device_id, a.nonce, a.expires) == ("dev_1", "ab" * 16, NOW + timedelta(hours=1))
    assert a.manifest == TargetRef("tiny/1.1.0/bundle.json", 900, "1" * 64)
    assert a.manifest_hashes == {"sha256": "1" * 64}
    assert a.target == TargetRef("tiny/1.1.0/model.onnx", 4000, "2" * 64)
    assert a.target_hashes == {"sha256": "2" * 64}
    assert a.custom == CUSTOM
    assert a.digest == hashlib.sha256(canonical_json(signed)).hexdigest()
    assert a.alternates == (
        AssignedTarget(
            "onnx-int8", TargetRef("tiny/1.1.0/model-int8.onnx", 1500, "4" * 64), {"sha256": "4" * 64}, ALT_CUSTOM
        ),
    )


def test_hashes_are_kept_as_text_beside_the_sha256() -> None:
    target = {**signed_body()["target"], "hashes": {"sha256": "2" * 64, "sha512": "f" * 128}}
    assert verify(envelope(signed_body(target=target))).target_hashes == {"sha256": "2" * 64, "sha512": "f" * 128}


def test_keep_what_you_run_has_no_release_fields_and_empty_maps() -> None:
    a = verify(envelope(signed_body(rollout_id=None, release=None, manifest=None, target=None, gates=None)))
    assert (a.rollout_id, a.release, a.name, a.version, a.variant) == (None, None, None, None, None)
    assert (a.manifest, a.target, a.targets()) == (None, None, ())
    assert a.custom == {} and a.gates == {} and a.target_hashes == {} and a.manifest_hashes == {}
    assert a.alternates == ()


def test_a_release_without_a_target_still_reports_its_counter() -> None:
    a = verify(envelope(signed_body(manifest=None, target=None)), highest_release=9)
    assert (a.release, a.name, a.version) == (5, "tiny", "1.1.0")


def test_a_boolean_counter_on_a_keep_assignment_is_no_counter() -> None:
    a = verify(envelope(signed_body(release={"counter": True}, manifest=None, target=None)))
    assert a.release is None


def test_a_lower_counter_is_kept_only_for_the_exact_running_release_and_file() -> None:
    env = envelope(signed_body())
    assert verify(env, highest_release=9, running=(5, "2" * 64)).release == 5
    assert refusal(env, highest_release=9, running=(4, "2" * 64)).reason is R.RELEASE_COUNTER_DECREASED
    assert refusal(env, highest_release=9, running=None).reason is R.RELEASE_COUNTER_DECREASED


# ----------------------------------------------------------------------------- alternates


def _alts(n: int) -> list[dict[str, Any]]:
    return [
        {"variant": f"v{i}", "target": {**alternate()["target"], "path": f"tiny/1.1.0/m{i}.onnx", "variant": f"v{i}"}}
        for i in range(n)
    ]


def test_the_most_alternates_allowed_are_accepted_and_one_more_is_refused_saying_so() -> None:
    assert len(verify(envelope(signed_body(alternates=_alts(MAX_ALTERNATES)))).alternates) == MAX_ALTERNATES
    e = refusal(envelope(signed_body(alternates=_alts(MAX_ALTERNATES + 1))))
    assert f"names {MAX_ALTERNATES + 1} alternates, at most {MAX_ALTERNATES}" in str(e)


def test_an_empty_alternates_list_is_none() -> None:
    assert verify(envelope(signed_body(alternates=[]))).alternates == ()


def test_an_alternate_without_its_own_variant_field_takes_the_entrys() -> None:
    entry = alternate()
    del entry["target"]["variant"]
    assert verify(envelope(signed_body(alternates=[entry]))).alternates[0].variant == "onnx-int8"


def test_an_alternate_without_custom_fields_has_none() -> None:
    entry = alternate()
    del entry["target"]["custom"]
    assert verify(envelope(signed_body(alternates=[entry]))).alternates[0].custom == {}


def test_two_alternates_may_not_repeat_each_other() -> None:
    twice = [_alts(1)[0], _alts(1)[0]]
    e = refusal(envelope(signed_body(alternates=twice)))
    assert "alternates[1] repeats variant 'v0' or file tiny/1.1.0/m0.onnx" in str(e)
    same_file = [_alts(1)[0], {**_alts(2)[1], "target": {**_alts(2)[1]["target"], "path": "tiny/1.1.0/m0.onnx"}}]
    assert "alternates[1] repeats" in str(refusal(envelope(signed_body(alternates=same_file))))


@pytest.mark.parametrize(
    ("alternates", "words"),
    [
        ({"x": 1}, "alternates must be a list, got dict"),
        (["text"], "alternates[0] must be {variant, target}"),
        ([{"variant": "", "target": alternate()["target"]}], "alternates[0] must be {variant, target}"),
        ([{"variant": 3, "target": alternate()["target"]}], "alternates[0] must be {variant, target}"),
        ([{"variant": "onnx-int8", "target": "x"}], "alternates[0] must be {variant, target}"),
        ([alternate(path=None, length="x")], "alternates[0].target is malformed"),
        ([alternate(variant="onnx-fp16")], "alternates[0] names variant 'onnx-int8' and its target 'onnx-fp16'"),
        ([alternate(custom=[1])], "alternates[0].target.custom must be an object"),
    ],
)
def test_a_bad_alternate_is_refused_naming_it(alternates: Any, words: str) -> None:
    e = refusal(envelope(signed_body(alternates=alternates)))
    assert e.reason is R.TARGET_MISMATCH and words in str(e)
    assert e.claimed == {"rollout_id": "ro_1", "release": 5}


def test_alternates_without_a_target_say_so() -> None:
    e = refusal(envelope(signed_body(target=None, alternates=[alternate()])))
    assert "names alternates but no target" in str(e)


# ----------------------------------------------------------------------------- match_target


def _match(**over: Any) -> None:
    a = verify(envelope(signed_body()))
    assert a.target is not None
    kw: dict[str, Any] = {
        "tuf_length": 4000,
        "tuf_hashes": {"sha256": "2" * 64},
        "tuf_custom": CUSTOM,
        "custom": a.custom,
        "release": a,
        "variant": "onnx-fp32",
    }
    kw.update(over)
    match_target(a.target, a.target_hashes, **kw)


def test_the_exact_tuf_view_matches_with_or_without_custom_and_variant_checks() -> None:
    _match()
    _match(custom=None, variant=None)


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"tuf_length": 4001}, "tiny/1.1.0/model.onnx: assignment length 4000, TUF 4001"),
        ({"tuf_hashes": {"sha256": "9" * 64}}, "tiny/1.1.0/model.onnx: assignment hashes differ"),
        ({"custom": {"x": 1}}, "tiny/1.1.0/model.onnx: assignment custom fields differ"),
        ({"tuf_custom": {}, "custom": None}, "tiny/1.1.0/model.onnx: TUF target has no edgefleet custom fields"),
        ({"tuf_custom": {"edgefleet": "x"}, "custom": None}, "TUF target has no edgefleet custom fields"),
        (
            {"tuf_custom": {"edgefleet": {**CUSTOM["edgefleet"], "bundle": "big"}}, "custom": None},
            "tiny/1.1.0/model.onnx: TUF target is {'bundle': 'big', 'version': '1.1.0'}, "
            "the assignment's release is {'bundle': 'tiny', 'version': '1.1.0'}",
        ),
        (
            {"tuf_custom": {"edgefleet": {**CUSTOM["edgefleet"], "release": 6}}, "custom": None},
            "tiny/1.1.0/model.onnx: TUF signs release counter 6 for this target, the assignment 5",
        ),
        (
            {"tuf_custom": {"edgefleet": {**CUSTOM["edgefleet"], "release": True}}, "custom": None},
            "TUF signs release counter True",
        ),
        (
            {"tuf_custom": {"edgefleet": {**CUSTOM["edgefleet"], "release": "5"}}, "custom": None},
            "TUF signs release counter '5'",
        ),
        (
            {
                "tuf_custom": {"edgefleet": {k: v for k, v in CUSTOM["edgefleet"].items() if k != "release"}},
                "custom": None,
            },
            "TUF signs release counter None",
        ),
        (
            {"variant": "onnx-int8"},
            "tiny/1.1.0/model.onnx: TUF target is variant 'onnx-fp32', the assignment names 'onnx-int8'",
        ),
    ],
)
def test_each_mismatch_with_tuf_is_refused_saying_which(over: dict[str, Any], words: str) -> None:
    with pytest.raises(FatalError) as info:
        _match(**over)
    assert info.value.reason is R.TARGET_MISMATCH
    assert words in str(info.value)


def test_a_release_of_a_true_counter_never_matches_a_tuf_counter_of_one() -> None:
    """``True == 1`` in Python: a boolean signed by TUF is not a counter."""
    a = verify(envelope(signed_body(release={"counter": 1, "name": "tiny", "version": "1.1.0"})), highest_release=0)
    assert a.target is not None
    one = {"edgefleet": {**CUSTOM["edgefleet"], "release": 1}}
    match_target(
        a.target, a.target_hashes, tuf_length=4000, tuf_hashes=a.target_hashes, tuf_custom=one, custom=None, release=a
    )
    true = {"edgefleet": {**CUSTOM["edgefleet"], "release": True}}
    with pytest.raises(FatalError):
        match_target(
            a.target,
            a.target_hashes,
            tuf_length=4000,
            tuf_hashes=a.target_hashes,
            tuf_custom=true,
            custom=None,
            release=a,
        )


def test_the_time_of_the_check_is_the_callers_clock() -> None:
    later = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert refusal(envelope(signed_body()), now=later).reason is R.ASSIGNMENT_EXPIRED


# ----------------------------------------------------------------------------- exact words and claims

CLAIMED = {"rollout_id": "ro_1", "release": 5}


@pytest.mark.parametrize(
    ("env", "over", "message"),
    [
        (
            {"signed": {**signed_body(), "name": "\ud800"}, "signatures": []},
            {},
            "SIGNATURE_INVALID: assignment is not valid UTF-8 JSON",
        ),
        ({"signed": signed_body()}, {}, "SIGNATURE_INVALID: assignment carries no signatures"),
        (envelope(signed_body(_type="root")), {}, "SIGNATURE_INVALID: signed _type is 'root'"),
        (
            envelope(signed_body(nonce="cd" * 16)),
            {},
            "NONCE_MISMATCH: assignment carries another nonce than this poll's (replayed?)",
        ),
        (
            envelope(signed_body()),
            {"now": NOW + timedelta(hours=2)},
            "ASSIGNMENT_EXPIRED: assignment expired at 2026-11-27T11:00:00Z",
        ),
        (
            envelope(signed_body(manifest=None)),
            {},
            "TARGET_MISMATCH: a target needs a release counter and a manifest",
        ),
        (
            envelope(signed_body()),
            {"highest_release": 7},
            "RELEASE_COUNTER_DECREASED: release counter 5 is below 7, the highest accepted",
        ),
        (
            envelope(signed_body(target=None, alternates=[alternate()])),
            {},
            "TARGET_MISMATCH: assignment names alternates but no target",
        ),
        (
            envelope(signed_body(alternates=_alts(MAX_ALTERNATES + 1))),
            {},
            f"TARGET_MISMATCH: assignment names {MAX_ALTERNATES + 1} alternates, at most {MAX_ALTERNATES}",
        ),
        (
            envelope(signed_body(alternates=[_alts(1)[0], _alts(1)[0]])),
            {},
            "TARGET_MISMATCH: assignment alternates[1] repeats variant 'v0' or file tiny/1.1.0/m0.onnx",
        ),
    ],
)
def test_each_refusal_says_exactly_what_and_carries_what_was_claimed(
    env: Any, over: dict[str, Any], message: str
) -> None:
    e = refusal(env, **over)
    assert str(e) == message
    assert e.claimed == CLAIMED


def test_an_unreadable_expiry_says_so_exactly() -> None:
    e = refusal(envelope(signed_body(expires="soon")))
    assert str(e) == "SIGNATURE_INVALID: expires is not an ISO-8601 time: 'soon'"
    assert e.claimed == CLAIMED  # the refusal report names the rollout and release, as every other does


def test_a_malformed_rollout_id_says_so_exactly() -> None:
    e = refusal(envelope(signed_body(rollout_id=7)))
    assert str(e) == "TARGET_MISMATCH: assignment rollout_id must be a string"


def test_a_non_envelope_says_so_exactly() -> None:
    assert str(refusal("text")) == "SIGNATURE_INVALID: assignment is not a {signed, signatures} envelope"


def test_the_keys_tried_are_listed_by_their_short_ids() -> None:
    a = DirectorKey.from_dict(key_dict(Ed25519PrivateKey.generate()))
    b = DirectorKey.from_dict(key_dict(Ed25519PrivateKey.generate()))
    e = refusal(envelope(signed_body()), key=[a, b])
    assert str(e) == f"SIGNATURE_INVALID: no signature verifies with the director keys {a.keyid[:12]}, {b.keyid[:12]}"


def test_a_key_built_now_has_its_sha256_id() -> None:
    private = Ed25519PrivateKey.generate()
    key = DirectorKey.from_dict(key_dict(private))
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert key.keyid == hashlib.sha256(public).hexdigest()


def test_an_alternate_may_not_repeat_an_earlier_alternates_variant_with_another_file() -> None:
    first, second = _alts(2)
    second = {"variant": "v0", "target": {**second["target"], "variant": "v0"}}  # v0 again, file m1
    e = refusal(envelope(signed_body(alternates=[first, second])))
    assert str(e) == "TARGET_MISMATCH: assignment alternates[1] repeats variant 'v0' or file tiny/1.1.0/m1.onnx"


def test_tuf_custom_fields_that_are_not_an_object_are_a_mismatch() -> None:
    a = verify(envelope(signed_body()))
    assert a.target is not None
    odd: Any = None  # what a broken TUF client could hand over
    with pytest.raises(FatalError) as info:
        match_target(
            a.target,
            a.target_hashes,
            tuf_length=4000,
            tuf_hashes=a.target_hashes,
            tuf_custom=odd,
            custom=None,
            release=a,
        )
    assert str(info.value) == "TARGET_MISMATCH: tiny/1.1.0/model.onnx: TUF target has no edgefleet custom fields"


def test_only_an_upper_case_z_stands_for_utc() -> None:
    with pytest.raises(FatalError):
        parse_time("2026-11-27T10:00:00z", where="expires")
