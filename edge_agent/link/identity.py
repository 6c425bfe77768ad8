"""Device identity and enrollment: the token, the device key, the pinned image root and director key.

``enroll`` makes the device's Ed25519 key pair — the private key is written
``0600`` to ``device_key.pem`` and never leaves the vehicle; the server gets
the public half and verifies every report with it — then registers the
device with an enrollment credential (which binds its group and tags), pins the image
root (TUF trust anchor) and the director public key — the ones given on the
command line from the provisioning dir, which must then equal what the
server sends, or the server's on first contact — and stores the identity
``0600``. Nothing here polls or installs anything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.config import AgentPaths
from edge_agent.errors import ConfigError, JournalError, ServerError
from edge_agent.link.client import ServerClient
from edge_agent.trust.assignment import DirectorKey
from models.device_reports import public_key_hex
from models.fsio import write_atomic
from models.hardware import HardwareProfile, detect_profile

__all__ = ["Identity", "device_key_path", "enroll", "load_device_key", "load_identity", "load_profile"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    device_id: str
    device_token: str
    server: str
    metadata_url: str
    targets_url: str
    name: str
    group: str
    hardware_overrides: Mapping[str, Any]


def load_identity(paths: AgentPaths) -> Identity:
    """The stored identity; raises ConfigError when not enrolled or invalid, JournalError when unreadable."""
    if not paths.identity.is_file():
        raise ConfigError(f"{paths.root} is not enrolled (no {paths.identity.name}); run `edge-agent enroll` first")
    try:
        data = json.loads(paths.identity.read_bytes())
    except (OSError, ValueError) as e:
        raise JournalError(f"cannot read {paths.identity}: {e}") from e
    try:
        return Identity(**{**data, "hardware_overrides": dict(data.get("hardware_overrides") or {})})
    except TypeError as e:
        raise ConfigError(f"{paths.identity} is invalid: {e}") from e


def device_key_path(paths: AgentPaths) -> Path:
    """Where the device's private key lives (``0600``, beside ``identity.json``)."""
    return paths.root / "device_key.pem"


def load_device_key(paths: AgentPaths) -> Ed25519PrivateKey:
    """The device's private key; raises ConfigError when it is missing or not an Ed25519 key
    (a device enrolled by an older agent has none: enroll it again)."""
    path = device_key_path(paths)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the device key {path}: {e} (re-enroll the device)") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


def load_profile(identity: Identity) -> HardwareProfile:
    return detect_profile(overrides=identity.hardware_overrides or None)


def _pin(given: Path | None, served: Any, what: str) -> Any:
    if given is None:
        if served is None:
            raise ConfigError(f"the server sent no {what} and none was given")
        return served
    try:
        pinned = json.loads(given.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the {what} file {given}: {e}") from e
    if served is not None and pinned != served:
        raise ConfigError(f"the server's {what} differs from {given}: refusing to enroll (wrong server?)")
    return pinned


def enroll(
    paths: AgentPaths,
    *,
    server: str,
    token: str,
    name: str,
    group: str | None = None,
    tags: Sequence[str] | None = None,
    hardware_overrides: Mapping[str, Any] | None = None,
    root_file: Path | None = None,
    director_key_file: Path | None = None,
    timeout_s: float = 10.0,
) -> Identity:
    """Enroll this device; raises ConfigError (mismatching trust anchors) or ServerError.

    The credential binds the group and tags: ``group`` and ``tags``, when given, must be what it
    binds (the server refuses others); left out, the device gets what it binds.
    """
    if paths.identity.exists():
        raise ConfigError(f"{paths.root} is already enrolled; use another --data-dir")
    profile = detect_profile(overrides=hardware_overrides or None)
    key = Ed25519PrivateKey.generate()
    body: dict[str, Any] = {"name": name, "hardware": profile.to_dict(), "public_key": public_key_hex(key)}
    if group is not None:
        body["group"] = group
    if tags is not None:
        body["tags"] = list(tags)
    resp = ServerClient(server, timeout_s=timeout_s).enroll(token, body)
    try:
        device_id, device_token = str(resp["device_id"]), str(resp["device_token"])
    except (KeyError, TypeError) as e:
        raise ServerError(f"enrollment answer lacks {e}") from e
    root = _pin(root_file, resp.get("image_root"), "image root")
    director = _pin(director_key_file, resp.get("director_public_key"), "director key")
    DirectorKey.from_dict(director)  # refuse a malformed key now, not at the first poll
    tuf = resp.get("tuf") or {}
    base = server.rstrip("/") + "/"
    identity = Identity(
        device_id=device_id,
        device_token=device_token,
        server=server.rstrip("/"),
        metadata_url=urljoin(base, tuf.get("metadata_url") or "tuf/metadata/"),
        targets_url=urljoin(base, tuf.get("targets_url") or "tuf/targets/"),
        name=name,
        group=str(resp.get("group") or group or "default"),
        hardware_overrides=dict(hardware_overrides or {}),
    )
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.root.chmod(0o700)
    write_atomic(paths.pinned_root, json.dumps(root).encode(), mode=0o644)
    write_atomic(paths.director_key, json.dumps(director).encode(), mode=0o644)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_atomic(device_key_path(paths), pem, mode=0o600)
    write_atomic(
        paths.identity,
        json.dumps(asdict(identity) | {"hardware_overrides": dict(identity.hardware_overrides)}, indent=1).encode(),
        mode=0o600,
    )
    log.info("enrolled as %s (%s) with %s; image root and director key pinned", device_id, name, server)
    if resp.get("status") == "pending":
        log.warning("%s waits for an operator's approval (ota-ctl devices approve %s)", device_id, device_id)
    return identity
