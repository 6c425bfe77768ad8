"""Signed device reports (docs/contracts.md §7): what a device signs, and the assignment digest.

Every device holds an Ed25519 key made at enrollment (the server keeps only the public half).
Each report it posts carries ``signature``: the device's signature over :func:`signed_bytes`, the
canonical JSON of the report's security-relevant fields (device id, report id and time, type,
state, rollout, release, reason code, the release it runs, and ``assignment_digest``).

``assignment_digest`` names the director's assignment the device acted on:
:func:`assignment_digest` is the SHA-256 of the canonical JSON of the assignment's ``signed``
part without its per-poll fields (nonce, issue and expiry time), so it is the same for every
re-signing of one assignment. The server records the digest of each rollout assignment it
issues to a device and counts a report for a rollout only when its digest is one of them.

Shared by the agent, the server and the fleet simulator. No I/O; ``cryptography`` is imported
by the functions that sign or verify, so the digest alone needs nothing beyond the standard library.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from models.bundle import canonical_json

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "DIGEST_RE",
    "PUBLIC_KEY_RE",
    "SIGNATURE_RE",
    "VOLATILE",
    "assignment_digest",
    "public_key_hex",
    "sign_report",
    "signed_bytes",
    "verify_report",
]

VOLATILE = ("nonce", "issued", "expires")  # fields of an assignment that change with every poll
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
PUBLIC_KEY_RE = re.compile(r"^[0-9a-f]{64}$")  # a raw Ed25519 public key, hex
SIGNATURE_RE = re.compile(r"^[0-9a-f]{128}$")  # a raw Ed25519 signature, hex


def assignment_digest(signed: Mapping[str, Any]) -> str:
    """The digest of an assignment's ``signed`` part, its per-poll fields left out."""
    stable = {k: v for k, v in signed.items() if k not in VOLATILE}
    return hashlib.sha256(canonical_json(stable)).hexdigest()


def signed_bytes(device_id: str, report: Mapping[str, Any]) -> bytes:
    """What the device signs of ``report``: its security-relevant fields, as they were sent."""
    running = report.get("running")
    return canonical_json(
        {
            "device_id": device_id,
            "id": report.get("id"),
            "time": report.get("time"),
            "type": report.get("type"),
            "state": report.get("state"),
            "rollout_id": report.get("rollout_id"),
            "release": report.get("release"),
            "reason_code": report.get("reason_code"),
            "running_release": running.get("release") if isinstance(running, Mapping) else None,
            "assignment_digest": report.get("assignment_digest"),
        }
    )


def public_key_hex(key: Ed25519PrivateKey) -> str:
    """The raw public key of ``key``, hex (what enrollment sends)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def sign_report(key: Ed25519PrivateKey, device_id: str, report: Mapping[str, Any]) -> dict[str, Any]:
    """``report`` with its ``signature`` (see the module docstring)."""
    out = {k: v for k, v in report.items() if k != "signature"}
    out["signature"] = key.sign(signed_bytes(device_id, out)).hex()
    return out


def verify_report(public_hex: str, device_id: str, report: Mapping[str, Any]) -> bool:
    """Whether ``report`` carries a valid signature of the key ``public_hex`` (hex, raw)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    sig = report.get("signature")
    if not isinstance(sig, str) or not SIGNATURE_RE.match(sig) or not PUBLIC_KEY_RE.match(public_hex):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(
            bytes.fromhex(sig), signed_bytes(device_id, report)
        )
    except (InvalidSignature, ValueError):
        return False
    return True
