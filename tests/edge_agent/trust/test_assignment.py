"""The pure trust core: director assignment verification and TUF target matching, with real Ed25519 keys."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge_agent.errors import ConfigError, FatalError, ReasonCode
from edge_agent.trust.assignment import MAX_ALTERNATES, DirectorKey, match_target, verify_assignment
from models.bundle import canonical_json

R = ReasonCode
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
PRIV = Ed25519PrivateKey.generate()
KEY_DICT = {
    "keytype": "ed25519",
    "scheme": "ed25519",
    "keyval": {"public": PRIV.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()},
}
KEY = DirectorKey.from_dict(KEY_DICT)
CUSTOM = {
    "edgefleet": {
        "bundle": "tiny",
        "version": "1.1.0",
        "release": 5,
        "kind": "variant",
        "variant": "onnx-fp32",
        "requires": None,
    }
}


ALT_CUSTOM = {"edgefleet": {**CUSTOM["edgefleet"], "variant": "onnx-int8"}}


def alternate(**over: Any) -> dict[str, Any]:
    target = {
        "path": "tiny/1.1.0/model-int8.onnx",
        "length": 1500,
        "hashes": {"sha256": "4" * 64},
        "custom": copy.deepcopy(ALT_CUSTOM),
        "variant": "onnx-int8",
    }
    target.update(over)
    return {"variant": "onnx-int8", "target": target}


def signed_body(**over: Any) -> dict[str, Any]:
    body = {
        "_type": "edgefleet-assignment",
        "spec_version": "1",
        "device_id": "dev_1",
        "nonce": "ab" * 16,
        "issued": "2026-11-27T09:59:00Z",
        "expires": "2026-11-27T11:00:00Z",
        "rollout_id": "ro_1",
        "release": {"counter": 5, "name": "tiny", "version": "1.1.0"},
        "manifest": {"path": "tiny/1.1.0/bundle.json", "length": 900, "hashes": {"sha256": "1" * 64}},
        "target": {
            "path": "tiny/1.1.0/model.onnx",
            "length": 4000,
            "hashes": {"sha256": "2" * 64},
            "custom": copy.deepcopy(CUSTOM),
            "variant": "onnx-fp32",
        },
        "gates": {"latency_budget_ms": 30.0},
    }
    body.update(over)
    return body


def envelope(signed: dict[str, Any], key: Ed25519PrivateKey = PRIV) -> dict[str, Any]:
    return {"signed": signed, "signatures": [{"keyid": KEY.keyid, "sig": key.sign(canonical_json(signed)).hex()}]}


def verify(env: Any, **over: Any) -> Any:
    kw: dict[str, Any] = {"key": KEY, "device_id": "dev_1", "nonce": "ab" * 16, "now": NOW, "highest_release": 4}
    kw.update(over)
    return verify_assignment(env, **kw)


def test_valid_assignment_is_accepted() -> None:
    a = verify(envelope(signed_body()))
    assert (a.release, a.name, a.version, a.variant, a.rollout_id) == (5, "tiny", "1.1.0", "onnx-fp32", "ro_1")
    assert a.target is not None and a.target.length == 4000 and a.target.sha256 == "2" * 64
    assert a.gates == {"latency_budget_ms": 30.0} and len(a.digest) == 64


def test_keep_what_you_run_assignment() -> None:
    a = verify(envelope(signed_body(release=None, manifest=None, target=None, gates=None)))
    assert a.target is None and a.release is None


def _tampered_after_signing() -> dict[str, Any]:
    env = envelope(signed_body())
    env["signed"]["target"]["hashes"]["sha256"] = "3" * 64  # wrong hash in the assignment
    return env


def _alternate_tampered_after_signing() -> dict[str, Any]:
    env = envelope(signed_body(alternates=[alternate()]))
    env["signed"]["alternates"][0]["target"]["hashes"]["sha256"] = "3" * 64
    return env


ATTACKS = [
    ("tampered body (wrong hash)", _tampered_after_signing(), {}, R.SIGNATURE_INVALID),
    ("signed by another key", envelope(signed_body(), Ed25519PrivateKey.generate()), {}, R.SIGNATURE_INVALID),
    ("no signatures", {"signed": signed_body(), "signatures": []}, {}, R.SIGNATURE_INVALID),
    (
        "garbage signature",
        {"signed": signed_body(), "signatures": [{"keyid": "x", "sig": "zz"}]},
        {},
        R.SIGNATURE_INVALID,
    ),
    ("not an envelope", ["nope"], {}, R.SIGNATURE_INVALID),
    ("wrong _type", envelope(signed_body(_type="root")), {}, R.SIGNATURE_INVALID),
    ("another device", envelope(signed_body(device_id="dev_2")), {}, R.WRONG_DEVICE),
    ("replayed nonce", envelope(signed_body(nonce="cd" * 16)), {}, R.NONCE_MISMATCH),
    ("expired", envelope(signed_body(expires="2026-11-27T09:59:59Z")), {}, R.ASSIGNMENT_EXPIRED),
    ("expires now", envelope(signed_body()), {"now": NOW + timedelta(hours=1)}, R.ASSIGNMENT_EXPIRED),
    ("lower release counter", envelope(signed_body()), {"highest_release": 6}, R.RELEASE_COUNTER_DECREASED),
    ("target without counter", envelope(signed_body(release=None)), {}, R.TARGET_MISMATCH),
    ("malformed target", envelope(signed_body(target={"path": "x"})), {}, R.TARGET_MISMATCH),
    ("bad time", envelope(signed_body(expires="tomorrow")), {}, R.SIGNATURE_INVALID),
    ("alternate tampered after signing", _alternate_tampered_after_signing(), {}, R.SIGNATURE_INVALID),
    ("alternates not a list", envelope(signed_body(alternates={"onnx-int8": alternate()})), {}, R.TARGET_MISMATCH),
    (
        "alternate without a variant id",
        envelope(signed_body(alternates=[{"target": alternate()["target"]}])),
        {},
        R.TARGET_MISMATCH,
    ),
    (
        "malformed alternate target",
        envelope(signed_body(alternates=[{"variant": "onnx-int8", "target": {"path": "x"}}])),
        {},
        R.TARGET_MISMATCH,
    ),
    (
        "alternate with a bad hash",
        envelope(signed_body(alternates=[alternate(hashes={"sha256": "ab"})])),
        {},
        R.TARGET_MISMATCH,
    ),
    (
        "alternate names another variant than its target",
        envelope(signed_body(alternates=[alternate(variant="onnx-fp16")])),
        {},
        R.TARGET_MISMATCH,
    ),
    (
        "alternate repeats the primary variant",
        envelope(signed_body(alternates=[{**alternate(variant="onnx-fp32"), "variant": "onnx-fp32"}])),
        {},
        R.TARGET_MISMATCH,
    ),
    (
        "alternate repeats the primary file",
        envelope(signed_body(alternates=[alternate(path="tiny/1.1.0/model.onnx")])),
        {},
        R.TARGET_MISMATCH,
    ),
    (
        "alternates without a target",
        envelope(signed_body(target=None, alternates=[alternate()])),
        {},
        R.TARGET_MISMATCH,
    ),
    (
        "too many alternates",
        envelope(
            signed_body(
                alternates=[
                    {
                        "variant": f"v{i}",
                        "target": {**alternate()["target"], "path": f"tiny/1.1.0/m{i}.onnx", "variant": f"v{i}"},
                    }
                    for i in range(MAX_ALTERNATES + 1)
                ]
            )
        ),
        {},
        R.TARGET_MISMATCH,
    ),
]


@pytest.mark.parametrize(("name", "env", "over", "reason"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attacks_are_refused_with_their_reason(name: str, env: Any, over: dict[str, Any], reason: ReasonCode) -> None:
    with pytest.raises(FatalError) as info:
        verify(env, **over)
    assert info.value.reason is reason


def test_refusal_carries_the_claimed_rollout() -> None:
    with pytest.raises(FatalError) as info:
        verify(envelope(signed_body(device_id="dev_9")))
    assert info.value.claimed == {"rollout_id": "ro_1", "release": 5}


def test_equal_counter_is_accepted_for_resume() -> None:
    assert verify(envelope(signed_body()), highest_release=5).release == 5


@pytest.mark.parametrize(
    ("bad", "change"),
    [
        ("length", {"tuf_length": 4001}),
        ("hash", {"tuf_hashes": {"sha256": "9" * 64}}),
        ("extra hash", {"tuf_hashes": {"sha256": "2" * 64, "sha512": "0" * 128}}),
        ("custom", {"tuf_custom": {"edgefleet": {**CUSTOM["edgefleet"], "release": 2}}}),
        ("other bundle", {"tuf_custom": {"edgefleet": {**CUSTOM["edgefleet"], "version": "0.9.0"}}, "custom": None}),
    ],
)
def test_mix_and_match_is_refused(bad: str, change: dict[str, Any]) -> None:
    a = verify(envelope(signed_body()))
    assert a.target is not None
    kw: dict[str, Any] = {
        "tuf_length": 4000,
        "tuf_hashes": {"sha256": "2" * 64},
        "tuf_custom": CUSTOM,
        "custom": a.custom,
        "release": a,
    }
    match_target(a.target, a.target_hashes, **kw)  # the exact TUF view passes
    kw.update(change)
    with pytest.raises(FatalError) as info:
        match_target(a.target, a.target_hashes, **kw)
    assert info.value.reason is R.TARGET_MISMATCH


@pytest.mark.parametrize(
    "bad",
    [
        {"keytype": "rsa"},
        {"keytype": "ed25519", "keyval": {"public": "zz"}},
        {"keytype": "ed25519", "keyval": {"public": "00" * 8}},
        "text",
    ],
)
def test_bad_director_key_is_a_config_error(bad: Any) -> None:
    with pytest.raises(ConfigError):
        DirectorKey.from_dict(bad)


def test_lower_counter_of_the_running_model_is_keep_what_you_run() -> None:
    """After a failed release the director reassigns what the device runs (an older counter)."""
    a = verify(envelope(signed_body()), highest_release=9, running=(5, "2" * 64))
    assert a.release == 5
    with pytest.raises(FatalError) as info:  # same counter, another artifact: still a decrease
        verify(envelope(signed_body()), highest_release=9, running=(5, "7" * 64))
    assert info.value.reason is R.RELEASE_COUNTER_DECREASED


def test_alternates_are_verified_with_the_assignment() -> None:
    a = verify(envelope(signed_body(alternates=[alternate()])))
    assert [(t.variant, t.ref.path, t.ref.sha256) for t in a.targets()] == [
        ("onnx-fp32", "tiny/1.1.0/model.onnx", "2" * 64),
        ("onnx-int8", "tiny/1.1.0/model-int8.onnx", "4" * 64),
    ]
    assert a.alternates[0].custom == ALT_CUSTOM and a.alternates[0].hashes == {"sha256": "4" * 64}
    assert verify(envelope(signed_body())).alternates == ()  # an assignment without alternates
    assert verify(envelope(signed_body(alternates=None))).alternates == ()


TUF_VIEW = {"tuf_length": 1500, "tuf_hashes": {"sha256": "4" * 64}, "tuf_custom": ALT_CUSTOM}


@pytest.mark.parametrize(
    ("bad", "change"),
    [
        ("length", {"tuf_length": 1501}),
        ("hash", {"tuf_hashes": {"sha256": "5" * 64}}),
        ("custom", {"tuf_custom": {"edgefleet": {**ALT_CUSTOM["edgefleet"], "release": 2}}}),
        # the TUF file of another variant (here the primary's custom fields) under this variant's id
        ("another variant's file", {"tuf_custom": CUSTOM, "custom": None}),
    ],
)
def test_an_alternate_is_matched_against_tuf_exactly_like_the_primary(bad: str, change: dict[str, Any]) -> None:
    a = verify(envelope(signed_body(alternates=[alternate()])))
    alt = a.alternates[0]
    kw: dict[str, Any] = {**TUF_VIEW, "custom": alt.custom, "release": a, "variant": alt.variant}
    match_target(alt.ref, alt.hashes, **kw)  # the exact TUF view passes
    kw.update(change)
    with pytest.raises(FatalError) as info:
        match_target(alt.ref, alt.hashes, **kw)
    assert info.value.reason is R.TARGET_MISMATCH


def test_serving_an_alternate_of_a_lower_counter_is_keep_what_you_run() -> None:
    """The device chose the INT8 alternate of release 5; release 6 failed; the director reassigns 5."""
    env = envelope(signed_body(alternates=[alternate()]))
    assert verify(env, highest_release=9, running=(5, "4" * 64)).release == 5
    with pytest.raises(FatalError) as info:
        verify(env, highest_release=9, running=(5, "7" * 64))
    assert info.value.reason is R.RELEASE_COUNTER_DECREASED


_NOT_A_HASH = ["../../etc", "../" * 21 + "a", "A" * 64, "g" * 64, "2" * 63 + "/", "2" * 65, " " + "2" * 63]


@pytest.mark.parametrize("bad", _NOT_A_HASH)
@pytest.mark.parametrize("where", ["target", "manifest", "alternate"])
def test_a_sha256_that_is_not_64_lowercase_hex_digits_is_refused(where: str, bad: str) -> None:
    """The sha256 becomes a file name (``<downloads>/<sha256>.part``): a signed "../../etc" is refused."""
    body = signed_body()
    if where == "alternate":
        body["alternates"] = [alternate(hashes={"sha256": bad})]
    else:
        body[where]["hashes"] = {"sha256": bad}
    with pytest.raises(FatalError) as e:
        verify(envelope(body))
    assert e.value.reason is R.TARGET_MISMATCH
