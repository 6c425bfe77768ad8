"""Director assignment verification: the pure trust core of the update path.

An assignment is accepted only when its Ed25519 signature (over
``canonical_json(signed)``) verifies with a director key the TUF targets
metadata lists (:func:`director_keys`; the key pinned at enrollment when it
lists none), its device id and nonce are ours, it has not expired and its
release counter is not below the highest one accepted. :func:`match_target`
then requires each assigned target — the primary variant and every alternate
the device may time against it — to equal the TUF target *exactly* (length,
every hash, custom fields, variant id, and the release counter the targets key signs in
``custom.edgefleet.release``) so a director cannot mix an artifact with another
release's metadata, nor raise the counter on the director key alone. :class:`TargetRef` is a target as a verified
assignment names it; the update path carries it in its journaled update.

Pure: no network, no files, the clock is a parameter. Every refusal raises
:class:`~edge_agent.errors.FatalError` with its reason code.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.errors import ConfigError, FatalError, ReasonCode
from models.bundle import canonical_json

__all__ = [
    "DIRECTOR_TARGET",
    "MAX_ALTERNATES",
    "MAX_DIRECTOR_KEYS",
    "director_keys",
    "SHA256_HEX",
    "TargetRef",
    "DirectorKey",
    "AssignedTarget",
    "Assignment",
    "verify_assignment",
    "match_target",
    "claimed_of",
    "parse_time",
]

_R = ReasonCode
MAX_ALTERNATES = 8  # variants one assignment may name besides the primary (docs/contracts.md §8)
DIRECTOR_TARGET = "edgefleet/director.json"  # the TUF target whose custom fields list the director keys
MAX_DIRECTOR_KEYS = 8
# a sha256 as TUF writes it; it names a file (``<downloads>/<sha256>.part``), so nothing else is taken
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class TargetRef:
    """A TUF target as the verified assignment names it."""

    path: str
    length: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "length": self.length, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetRef:
        return cls(path=str(data["path"]), length=int(data["length"]), sha256=str(data["sha256"]))


@dataclass(frozen=True)
class DirectorKey:
    """The director's Ed25519 public key (``{"keytype": "ed25519", "keyval": {"public": hex}}``)."""

    public: bytes
    keyid: str

    @classmethod
    def from_dict(cls, data: Any) -> DirectorKey:
        if not isinstance(data, Mapping):
            raise ConfigError(f"director key must be a JSON object, got {type(data).__name__}")
        if data.get("keytype") != "ed25519":
            raise ConfigError(f"director key keytype must be 'ed25519', got {data.get('keytype')!r}")
        try:
            public = bytes.fromhex(str(data["keyval"]["public"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"director key keyval.public must be hex: {e}") from e
        if len(public) != 32:
            raise ConfigError(f"director key must be 32 bytes, got {len(public)}")
        return cls(public=public, keyid=hashlib.sha256(public).hexdigest())

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


def director_keys(custom: Mapping[str, Any] | None, *, pinned: DirectorKey) -> tuple[DirectorKey, ...]:
    """The director keys to verify assignments with: those the TUF target :data:`DIRECTOR_TARGET`
    lists in ``custom.edgefleet.keys`` (signed by the targets key, so a rotation reaches the device
    through TUF and a key it drops stops working), or the ``pinned`` one when TUF lists none.

    Raises:
        FatalError: SIGNATURE_INVALID when the list is malformed, empty or longer than
            :data:`MAX_DIRECTOR_KEYS`.
    """
    if custom is None:
        return (pinned,)
    ef = custom.get("edgefleet")
    keys = ef.get("keys") if isinstance(ef, Mapping) and ef.get("kind") == "director" else None
    if not isinstance(keys, list) or not 0 < len(keys) <= MAX_DIRECTOR_KEYS:
        raise FatalError(_R.SIGNATURE_INVALID, f"TUF target {DIRECTOR_TARGET} lists no valid director keys")
    try:
        return tuple(DirectorKey.from_dict(k) for k in keys)
    except ConfigError as e:
        raise FatalError(_R.SIGNATURE_INVALID, f"TUF target {DIRECTOR_TARGET}: {e}") from e


@dataclass(frozen=True)
class AssignedTarget:
    """One variant file an assignment names, exactly as signed: matched against TUF before any download."""

    variant: str
    ref: TargetRef
    hashes: Mapping[str, str]
    custom: Mapping[str, Any]


@dataclass(frozen=True)
class Assignment:
    """A verified assignment. ``target`` None means "keep what you run".

    ``alternates`` are the other variants of the release, in the server's selection order, that the
    device's hardware class may run; the device times them against the primary in its gate.
    """

    device_id: str
    nonce: str
    expires: datetime
    rollout_id: str | None
    release: int | None
    name: str | None
    version: str | None
    manifest: TargetRef | None
    target: TargetRef | None
    variant: str | None
    target_hashes: Mapping[str, str] = field(default_factory=dict)
    manifest_hashes: Mapping[str, str] = field(default_factory=dict)
    custom: Mapping[str, Any] = field(default_factory=dict)
    gates: Mapping[str, Any] = field(default_factory=dict)
    digest: str = ""  # sha256 of canonical_json(signed): identifies this assignment
    alternates: tuple[AssignedTarget, ...] = ()

    def targets(self) -> tuple[AssignedTarget, ...]:
        """The primary target, then the alternates (empty for "keep what you run")."""
        if self.target is None:
            return ()
        primary = AssignedTarget(self.variant or "", self.target, self.target_hashes, self.custom)
        return (primary, *self.alternates)


def parse_time(text: Any, *, where: str, claimed: dict[str, Any] | None = None) -> datetime:
    """``"2026-11-27T10:00:00Z"`` → aware datetime; refuses anything else."""
    try:
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise FatalError(
            _R.SIGNATURE_INVALID, f"{where} is not an ISO-8601 time: {text!r:.80}", claimed=claimed
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def claimed_of(envelope: Any) -> dict[str, Any]:
    """Rollout and release an (unverified) assignment claims, for refusal reports."""
    signed = envelope.get("signed") if isinstance(envelope, Mapping) else None
    if not isinstance(signed, Mapping):
        return {}
    release = signed.get("release") if isinstance(signed.get("release"), Mapping) else {}
    counter = release.get("counter") if isinstance(release, Mapping) else None
    return {"rollout_id": signed.get("rollout_id"), "release": counter if isinstance(counter, int) else None}


def _object(value: Any, where: str, claimed: dict[str, Any]) -> dict[str, Any]:
    """An optional JSON object of the signed assignment (absent or null: empty); anything else is refused."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FatalError(
            _R.TARGET_MISMATCH, f"assignment {where} must be an object, got {type(value).__name__}", claimed=claimed
        )
    return dict(value)


def _ref(data: Any, where: str, claimed: dict[str, Any]) -> tuple[TargetRef, dict[str, str]] | None:
    if data is None:
        return None
    try:
        hashes = {str(k): str(v) for k, v in dict(data["hashes"]).items()}
        ref = TargetRef(path=str(data["path"]), length=int(data["length"]), sha256=hashes["sha256"])
    except (KeyError, TypeError, ValueError, OverflowError) as e:  # OverflowError: a length of Infinity
        raise FatalError(_R.TARGET_MISMATCH, f"assignment {where} is malformed: {e!r}", claimed=claimed) from e
    if ref.length <= 0 or not SHA256_HEX.fullmatch(ref.sha256):
        raise FatalError(
            _R.TARGET_MISMATCH,
            f"assignment {where} has a bad length or a sha256 that is not 64 lowercase hex digits",
            claimed=claimed,
        )
    return ref, hashes


def _alternates(
    signed: Mapping[str, Any], primary: TargetRef | None, primary_variant: str | None, claimed: dict[str, Any]
) -> tuple[AssignedTarget, ...]:
    """Parse ``alternates``: each a distinct variant and file, shaped like the primary target."""
    raw = signed.get("alternates")
    if raw is None or raw == []:
        return ()
    if not isinstance(raw, list):
        raise FatalError(
            _R.TARGET_MISMATCH, f"assignment alternates must be a list, got {type(raw).__name__}", claimed=claimed
        )
    if primary is None:
        raise FatalError(_R.TARGET_MISMATCH, "assignment names alternates but no target", claimed=claimed)
    if len(raw) > MAX_ALTERNATES:
        raise FatalError(
            _R.TARGET_MISMATCH, f"assignment names {len(raw)} alternates, at most {MAX_ALTERNATES}", claimed=claimed
        )
    seen_variants, seen_paths = {primary_variant}, {primary.path}
    out: list[AssignedTarget] = []
    for i, entry in enumerate(raw):
        where = f"alternates[{i}]"
        variant = entry.get("variant") if isinstance(entry, Mapping) else None
        target = entry.get("target") if isinstance(entry, Mapping) else None
        if not isinstance(variant, str) or not variant or not isinstance(target, Mapping):
            raise FatalError(_R.TARGET_MISMATCH, f"assignment {where} must be {{variant, target}}", claimed=claimed)
        parsed = _ref(target, f"{where}.target", claimed)
        assert parsed is not None  # target is a mapping
        ref, hashes = parsed
        if target.get("variant", variant) != variant:
            raise FatalError(
                _R.TARGET_MISMATCH,
                f"assignment {where} names variant {variant!r} and its target {target.get('variant')!r}",
                claimed=claimed,
            )
        if variant in seen_variants or ref.path in seen_paths:
            raise FatalError(
                _R.TARGET_MISMATCH,
                f"assignment {where} repeats variant {variant!r} or file {ref.path}",
                claimed=claimed,
            )
        seen_variants.add(variant)
        seen_paths.add(ref.path)
        custom = _object(target.get("custom"), f"{where}.target.custom", claimed)
        out.append(AssignedTarget(variant, ref, hashes, custom))
    return tuple(out)


def _check_signature(envelope: Any, keys: Sequence[DirectorKey], claimed: dict[str, Any]) -> Mapping[str, Any]:
    if not isinstance(envelope, Mapping) or not isinstance(envelope.get("signed"), Mapping):
        raise FatalError(_R.SIGNATURE_INVALID, "assignment is not a {signed, signatures} envelope")
    signed = envelope["signed"]
    try:
        message = canonical_json(signed)
    except ValueError:  # a lone surrogate has no UTF-8: no key signed it
        raise FatalError(_R.SIGNATURE_INVALID, "assignment is not valid UTF-8 JSON", claimed=claimed) from None
    sigs = envelope.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise FatalError(_R.SIGNATURE_INVALID, "assignment carries no signatures", claimed=claimed)
    for sig in sigs:
        try:
            raw = bytes.fromhex(str(sig["sig"]))
        except (KeyError, TypeError, ValueError):
            continue
        if any(key.verify(raw, message) for key in keys):
            return cast(Mapping[str, Any], signed)
    ids = ", ".join(key.keyid[:12] for key in keys)
    raise FatalError(_R.SIGNATURE_INVALID, f"no signature verifies with the director keys {ids}", claimed=claimed)


def verify_assignment(
    envelope: Any,
    *,
    key: DirectorKey | Sequence[DirectorKey],
    device_id: str,
    nonce: str,
    now: datetime,
    highest_release: int,
    running: tuple[int, str] | None = None,
) -> Assignment:
    """Verify a director assignment envelope for this device; raises FatalError with the reason.

    ``key`` is the director key, or the keys :func:`director_keys` found (any one may sign).
    ``running`` is (release counter, sha256) of the model active now: an
    assignment of exactly that is "keep what you run", even when its counter
    is below the highest accepted (the release that followed failed).
    """
    claimed = claimed_of(envelope)
    signed = _check_signature(envelope, (key,) if isinstance(key, DirectorKey) else tuple(key), claimed)
    if signed.get("_type") != "edgefleet-assignment":
        raise FatalError(_R.SIGNATURE_INVALID, f"signed _type is {signed.get('_type')!r}", claimed=claimed)
    if signed.get("device_id") != device_id:
        raise FatalError(
            _R.WRONG_DEVICE,
            f"assignment is for {signed.get('device_id')!r}, this device is {device_id!r}",
            claimed=claimed,
        )
    if signed.get("nonce") != nonce:
        raise FatalError(
            _R.NONCE_MISMATCH, "assignment carries another nonce than this poll's (replayed?)", claimed=claimed
        )
    expires = parse_time(signed.get("expires"), where="expires", claimed=claimed)
    if expires <= now:
        raise FatalError(_R.ASSIGNMENT_EXPIRED, f"assignment expired at {signed.get('expires')}", claimed=claimed)
    rollout_id = signed.get("rollout_id")
    if rollout_id is not None and not isinstance(rollout_id, str):
        raise FatalError(_R.TARGET_MISMATCH, "assignment rollout_id must be a string", claimed=claimed)
    release = _object(signed.get("release"), "release", claimed)
    counter = release.get("counter")
    target = _ref(signed.get("target"), "target", claimed)
    manifest = _ref(signed.get("manifest"), "manifest", claimed)
    raw_target = signed.get("target") or {}  # a mapping once _ref has accepted it
    variant = raw_target.get("variant")
    if variant is not None and (not isinstance(variant, str) or not variant):
        raise FatalError(
            _R.TARGET_MISMATCH, f"assignment target.variant must be a variant id, got {variant!r:.40}", claimed=claimed
        )
    alternates = _alternates(signed, target[0] if target else None, variant, claimed)
    if target is not None:
        if not isinstance(counter, int) or isinstance(counter, bool) or manifest is None:
            raise FatalError(_R.TARGET_MISMATCH, "a target needs a release counter and a manifest", claimed=claimed)
        # the device may serve an alternate it found faster: that too is "what it runs"
        files = {target[0].sha256, *(a.ref.sha256 for a in alternates)}
        if counter < highest_release and not (running is not None and running[0] == counter and running[1] in files):
            raise FatalError(
                _R.RELEASE_COUNTER_DECREASED,
                f"release counter {counter} is below {highest_release}, the highest accepted",
                claimed=claimed,
            )
    return Assignment(
        device_id=device_id,
        nonce=nonce,
        expires=expires,
        rollout_id=rollout_id,
        release=counter if isinstance(counter, int) and not isinstance(counter, bool) else None,
        name=_text(release.get("name"), "release.name", claimed),
        version=_text(release.get("version"), "release.version", claimed),
        manifest=manifest[0] if manifest else None,
        target=target[0] if target else None,
        variant=variant,
        target_hashes=target[1] if target else {},
        manifest_hashes=manifest[1] if manifest else {},
        custom=_object(raw_target.get("custom"), "target.custom", claimed),
        gates=_object(signed.get("gates"), "gates", claimed),
        digest=hashlib.sha256(canonical_json(signed)).hexdigest(),
        alternates=alternates,
    )


def _text(value: Any, where: str, claimed: dict[str, Any]) -> str | None:
    if value is not None and not isinstance(value, str):
        raise FatalError(_R.TARGET_MISMATCH, f"assignment {where} must be a string", claimed=claimed)
    return value


def match_target(
    assigned: TargetRef,
    hashes: Mapping[str, str],
    *,
    tuf_length: int,
    tuf_hashes: Mapping[str, str],
    tuf_custom: Mapping[str, Any],
    custom: Mapping[str, Any] | None,
    release: Assignment,
    variant: str | None = None,
) -> None:
    """The assigned target must equal the TUF target exactly; raises TARGET_MISMATCH.

    ``variant`` (for a model file) must be the variant the TUF target's custom fields name, so one
    variant's id cannot be attached to another variant's file.
    """
    where = assigned.path
    if tuf_length != assigned.length:
        raise FatalError(_R.TARGET_MISMATCH, f"{where}: assignment length {assigned.length}, TUF {tuf_length}")
    if dict(tuf_hashes) != dict(hashes):
        raise FatalError(_R.TARGET_MISMATCH, f"{where}: assignment hashes differ from the TUF target's")
    if custom is not None and dict(custom) != dict(tuf_custom):
        raise FatalError(_R.TARGET_MISMATCH, f"{where}: assignment custom fields differ from the TUF target's")
    ef = tuf_custom.get("edgefleet") if isinstance(tuf_custom, Mapping) else None
    if not isinstance(ef, Mapping):
        raise FatalError(_R.TARGET_MISMATCH, f"{where}: TUF target has no edgefleet custom fields")
    expected = {"bundle": release.name, "version": release.version}
    got = {k: ef.get(k) for k in expected}
    if got != expected:
        raise FatalError(_R.TARGET_MISMATCH, f"{where}: TUF target is {got}, the assignment's release is {expected}")
    # the counter is signed by the targets key too: the director key alone cannot raise (or lower) it
    tuf_counter = ef.get("release")
    if isinstance(tuf_counter, bool) or not isinstance(tuf_counter, int) or tuf_counter != release.release:
        raise FatalError(
            _R.TARGET_MISMATCH,
            f"{where}: TUF signs release counter {tuf_counter!r} for this target, the assignment {release.release!r}",
        )
    if variant is not None and ef.get("variant") != variant:
        raise FatalError(
            _R.TARGET_MISMATCH,
            f"{where}: TUF target is variant {ef.get('variant')!r}, the assignment names {variant!r}",
        )
