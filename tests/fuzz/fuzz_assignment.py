"""atheris: :func:`edge_agent.trust.assignment.verify_assignment` raises only ``FatalError``.

The assignment is the one answer of the director a device acts on. Each input is tried twice:
as the envelope itself (what a hostile network could send: it must be refused for its signature
or its shape) and as the ``signed`` part of an envelope signed with the pinned key (what a
director could sign: past the signature, every field check must hold). Seeds: assignments as
the director signs them — with a target and alternates, and "keep what you run".
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone

import atheris
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

with atheris.instrument_imports(include=["edge_agent.trust", "models"]):
    from edge_agent.errors import FatalError
    from edge_agent.trust.assignment import DirectorKey, verify_assignment
    from models.bundle import canonical_json

__all__ = ["SEEDS", "one_input"]

_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
_PUBLIC = _KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
DIRECTOR = DirectorKey.from_dict({"keytype": "ed25519", "keyval": {"public": _PUBLIC.hex()}})
DEVICE, NONCE = "dev_0123456789abcdef", "00112233445566778899aabbccddeeff"
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)


def _target(variant: str, n: int) -> dict[str, object]:
    sha = f"{n:064x}"
    return {
        "path": f"tiny/1.0.0/{variant}.onnx",
        "length": 300 + n,
        "hashes": {"sha256": sha},
        "variant": variant,
        "custom": {"edgefleet": {"bundle": "tiny", "version": "1.0.0", "release": 2, "variant": variant}},
    }


_SIGNED = {
    "_type": "edgefleet-assignment",
    "device_id": DEVICE,
    "nonce": NONCE,
    "expires": "2026-11-27T11:00:00Z",
    "rollout_id": "ro_0123456789abcdef",
    "release": {"name": "tiny", "version": "1.0.0", "counter": 2},
    "manifest": {"path": "tiny/1.0.0/bundle.json", "length": 2000, "hashes": {"sha256": "ab" * 32}},
    "target": _target("onnx-fp32", 1),
    "alternates": [{"variant": "onnx-fp16", "target": _target("onnx-fp16", 2)}],
    "gates": {"latency_budget_ms": 250.0, "min_agreement": 0.8},
}
_KEEP = {k: v for k, v in _SIGNED.items() if k not in ("target", "manifest", "alternates", "release")}
SEEDS = [json.dumps(_SIGNED).encode(), json.dumps(_KEEP).encode(), json.dumps({"signed": _KEEP}).encode()]


def _verify(envelope: object) -> None:
    with contextlib.suppress(FatalError):  # the documented error; anything else is a crash
        verify_assignment(envelope, key=DIRECTOR, device_id=DEVICE, nonce=NONCE, now=NOW, highest_release=1)


def one_input(data: bytes) -> None:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return  # the agent's client refuses an answer that is not JSON before verifying anything
    _verify(obj)
    try:
        message = canonical_json(obj)
    except ValueError:
        return  # not signable (a lone surrogate): no director could have signed it
    _verify({"signed": obj, "signatures": [{"keyid": DIRECTOR.keyid, "sig": _KEY.sign(message).hex()}]})


if __name__ == "__main__":
    from tests.fuzz.common import main

    main(one_input, SEEDS)
