"""Key files: Ed25519 private keys as PKCS#8 PEM (0600), public keys in the TUF key format.

The TUF roles sign through securesystemslib's ``CryptoSigner``; the director signs assignments
with ``cryptography`` directly (contract §8: keyid = sha256 of the raw public key bytes).
This module does not decide which keys are online; :mod:`ota_server.trust.repository` does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]

from models.bundle import canonical_json
from models.fsio import write_atomic
from ota_server.errors import SetupError

__all__ = [
    "DIRECTOR_TARGET",
    "TUF_ROLES",
    "director_keys_custom",
    "director_public_json",
    "generate_key",
    "load_private",
    "raw_public_hex",
    "sign_envelope",
    "tuf_public",
    "tuf_signer",
    "verify_envelope",
    "write_private",
]

TUF_ROLES = ("root", "targets", "snapshot", "timestamp")
# the TUF target that lists the director's public keys (signed by the targets key): devices accept
# assignments signed by these keys only, so rotating the director key is a TUF operation
DIRECTOR_TARGET = "edgefleet/director.json"


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file 0600 atomically (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, mode=0o600)


def generate_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(path, pem)
    return key


def load_private(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 PEM key; refuses group/world-readable files.

    Raises:
        SetupError: the file cannot be read, is not 0600, or is not an Ed25519 PEM private key.
    """
    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except OSError as e:
        raise SetupError(f"cannot read key file {path}: {e}") from e
    if mode & 0o077:
        raise SetupError(f"key file {path} has mode {oct(mode)}; it must be 0600 (chmod 600 {path})")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as e:
        raise SetupError(f"{path} is not a PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SetupError(f"{path} holds a {type(key).__name__}, expected an Ed25519 key")
    return key


def tuf_signer(key: Ed25519PrivateKey) -> CryptoSigner:
    public = SSlibKey.from_crypto(key.public_key())
    return CryptoSigner(key, public)


def tuf_public(key: Ed25519PrivateKey) -> SSlibKey:
    return SSlibKey.from_crypto(key.public_key())


def raw_public_hex(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def director_public_json(public: Ed25519PublicKey) -> dict[str, Any]:
    """The director key as devices pin it (contract §7)."""
    hex_pub = raw_public_hex(public)
    return {
        "keytype": "ed25519",
        "scheme": "ed25519",
        "keyid": hashlib.sha256(bytes.fromhex(hex_pub)).hexdigest(),
        "keyval": {"public": hex_pub},
    }


def director_keys_custom(publics: list[dict[str, Any]]) -> dict[str, Any]:
    """The custom fields of :data:`DIRECTOR_TARGET`: ``{"edgefleet": {"kind": "director", "keys": [...]}}``."""
    return {"edgefleet": {"kind": "director", "keys": publics}}


def sign_envelope(key: Ed25519PrivateKey, signed: dict[str, Any]) -> dict[str, Any]:
    """``{"signed": ..., "signatures": [{"keyid", "sig"}]}`` over canonical JSON."""
    keyid = director_public_json(key.public_key())["keyid"]
    sig = key.sign(canonical_json(signed)).hex()
    return {"signed": signed, "signatures": [{"keyid": keyid, "sig": sig}]}


def verify_envelope(public_json: dict[str, Any], envelope: dict[str, Any]) -> bool:
    """Check an envelope against a director public key in the contract §7 format."""
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_json["keyval"]["public"]))
    for sig in envelope.get("signatures", []):
        if sig.get("keyid") != public_json["keyid"]:
            continue
        try:
            public.verify(bytes.fromhex(sig["sig"]), canonical_json(envelope["signed"]))
            return True
        except (InvalidSignature, ValueError):
            return False
    return False
