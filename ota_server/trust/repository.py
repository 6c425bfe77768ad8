"""The TUF image repository on disk, kept with python-tuf's ``tuf.api.metadata``.

Layout (consistent snapshots)::

    tuf/metadata/1.root.json  N.targets.json  M.snapshot.json  timestamp.json
    tuf/targets/<name>/<version>/<sha256>.<file>      hard links into artifacts/

Every change writes new versioned files first and replaces ``timestamp.json`` last (temp file +
``os.replace``), all under an ``fcntl`` lock shared by every worker, so a reader never sees a
half-written repository. The root key may live offline: only re-signing root needs it. The
targets key may live offline too (no ``keys/targets.pem``): then :meth:`Repository.add_targets`
*stages* the change in ``tuf/staged/targets.json`` (unsigned targets metadata, version N+1, holding
every change since the last signing) and :mod:`ota_server.trust.offline` signs and installs it.

This module does not know about releases or the database; :mod:`ota_server.fleet.publish` drives it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer  # type: ignore[attr-defined]
from tuf.api.exceptions import RepositoryError as TufRepositoryError
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from models.fsio import write_atomic
from ota_server.config import ServerConfig
from ota_server.errors import RepositoryError
from ota_server.trust.keys import (
    DIRECTOR_TARGET,
    director_keys_custom,
    director_public_json,
    generate_key,
    load_private,
    tuf_public,
    tuf_signer,
)

__all__ = [
    "ONLINE_ROLES",
    "NewTarget",
    "OFFLINE_TARGETS_HINT",
    "Repository",
    "TARGETS_WARN_S",
    "create_repository",
    "file_lock",
    "resign_root",
    "rotate_director",
    "rotate_key",
]

ONLINE_ROLES = ("timestamp", "snapshot", "targets")  # keys that sign online and ``rotate_key`` rotates

log = logging.getLogger(__name__)
_SERIALIZER = JSONSerializer(compact=True)
TARGETS_WARN_S = 30 * 86400  # seconds before offline-signed targets expire that a timestamp re-signing warns
OFFLINE_TARGETS_HINT = "ota-server targets sign --data-dir DIR --targets-key PATH"  # the offline step


@dataclass(frozen=True)
class NewTarget:
    """A file to add as a TUF target; ``source`` is already in the artifact store."""

    path: str  # <name>/<version>/<file>
    source: Path
    length: int
    sha256: str
    custom: dict[str, Any]


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path`` (held across workers of this host)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class Repository:
    """Online operations on the TUF repository: add targets, re-sign snapshot/timestamp."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metadata_dir = config.metadata_dir
        self.targets_dir = config.targets_dir
        self._lock_path = config.locks_dir / "repository.lock"
        self._ts_cache: tuple[int, datetime, datetime] | None = None  # (mtime_ns, expires, targets expires)
        self._also_sign: dict[str, Sequence[Signer]] = {}
        self._targets_signers: Sequence[Signer] | None = None  # the offline key(s), while they are plugged in
        self.staged_path = config.metadata_dir.parent / "staged" / "targets.json"
        self.previous_timestamp: bytes | None = None
        self._staged_before: tuple[bytes | None] | None = None  # what :meth:`discard` restores

    @property
    def offline_targets(self) -> bool:
        """Whether the targets key is offline: the data directory holds no ``keys/targets.pem``."""
        return not (self.config.keys_dir / "targets.pem").exists()

    # ------------------------------------------------------------------ reading
    def _load(self, name: str) -> Metadata[Any]:
        try:
            return Metadata.from_bytes((self.metadata_dir / name).read_bytes())
        except (OSError, DeserializationError) as e:
            raise RepositoryError(f"cannot read TUF metadata {name}: {e}") from e

    def timestamp(self) -> Metadata[Timestamp]:
        return self._load("timestamp.json")

    def snapshot(self) -> Metadata[Snapshot]:
        version = self.timestamp().signed.snapshot_meta.version
        return self._load(f"{version}.snapshot.json")

    def targets(self) -> Metadata[Targets]:
        version = self.snapshot().signed.meta["targets.json"].version
        return self._load(f"{version}.targets.json")

    def root_version(self) -> int:
        """The highest root version in the metadata directory.

        Raises:
            RepositoryError: the directory holds no root metadata.
        """
        versions = [int(p.name.split(".")[0]) for p in self.metadata_dir.glob("*.root.json")]
        if not versions:
            raise RepositoryError(f"no root metadata in {self.metadata_dir}")
        return max(versions)

    def root(self) -> Metadata[Root]:
        return self._load(f"{self.root_version()}.root.json")

    def staged(self) -> Metadata[Targets] | None:
        """The staged (unsigned) targets metadata, None when nothing is staged.

        Raises:
            RepositoryError: the staged file cannot be read.
        """
        try:
            return Metadata.from_bytes(self.staged_path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, DeserializationError) as e:
            raise RepositoryError(f"cannot read the staged targets {self.staged_path}: {e}") from e

    def check_staged(self, staged: Metadata[Targets]) -> int:
        """The signed targets version; the staging must be version signed+1.

        Raises:
            RepositoryError: the staging is stale (the signed targets moved since it was staged).
        """
        current = self.targets().signed.version
        if staged.signed.version != current + 1:
            raise RepositoryError(
                f"the staged targets (version {staged.signed.version}) are stale: the signed targets are "
                f"version {current}, so the staging must be version {current + 1}; see `ota-server targets "
                f"status` (removing {self.staged_path} drops its changes)"
            )
        return current

    def write_staged(self, staged: Metadata[Targets]) -> None:
        """Write the staging (unsigned, a fresh expiry) atomically; the caller holds the lock."""
        staged.signatures.clear()
        staged.signed.expires = _now() + timedelta(seconds=self.config.targets_ttl_s)
        write_atomic(self.staged_path, staged.to_bytes(_SERIALIZER))

    # ------------------------------------------------------------------ writing
    @contextmanager
    def locked(self) -> Iterator[None]:
        with file_lock(self._lock_path):
            yield

    def _signer(self, role: str) -> Signer:
        if role == "targets" and self.offline_targets:
            raise RepositoryError(
                "the TUF targets key is offline (no keys/targets.pem): targets changes are staged and "
                f"signed with `{OFFLINE_TARGETS_HINT}`"
            )
        return tuf_signer(load_private(self.config.keys_dir / f"{role}.pem"))

    def _write(self, md: Metadata[Any], name: str, role: str) -> Path:
        md.signatures.clear()
        signers = self._targets_signers if role == "targets" and self._targets_signers else [self._signer(role)]
        for signer in signers:
            md.sign(signer, append=True)
        for extra in self._also_sign.get(role, ()):  # a key rotation signs with the old key too
            md.sign(extra, append=True)
        path = self.metadata_dir / name
        write_atomic(path, md.to_bytes(_SERIALIZER))
        return path

    def target_file(self, path: str, sha256: str) -> Path:
        """Where the consistent-snapshot file of target ``path`` with digest ``sha256`` lies."""
        return self.targets_dir / Path(path).parent / f"{sha256}.{Path(path).name}"

    def add_targets(self, new: Sequence[NewTarget]) -> list[Path]:
        """Link target files and write targets, snapshot, timestamp (caller holds the lock); with
        the targets key offline, stage the change instead (see the module docstring).

        Returns every file created, so a caller whose transaction fails can remove them
        (:meth:`discard`). ``timestamp.json`` is replaced last; its previous bytes (or, offline,
        the previous staging) are kept for :meth:`discard`.

        Raises:
            RepositoryError: the repository cannot be read or written, or the staging is stale.
        """
        created: list[Path] = []
        offline = self.offline_targets
        self.previous_timestamp = None if offline else (self.metadata_dir / "timestamp.json").read_bytes()
        self._staged_before = (
            (self.staged_path.read_bytes() if self.staged_path.exists() else None,) if offline else None
        )
        try:
            targets = self._staging() if offline else self.targets()
            for t in new:
                dest = self.target_file(t.path, t.sha256)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not dest.exists():
                    try:
                        os.link(t.source, dest)
                    except OSError:
                        write_atomic(dest, t.source.read_bytes())
                    created.append(dest)
                targets.signed.targets[t.path] = TargetFile(
                    length=t.length,
                    hashes={"sha256": t.sha256},
                    path=t.path,
                    unrecognized_fields={"custom": t.custom},
                )
            if offline:
                created.append(self.staged_path)  # :meth:`discard` restores the staging it replaced
                self.write_staged(targets)
            else:
                self._bump_targets(targets, created)
        except BaseException:
            self.discard(created)
            raise
        return created

    def _staging(self) -> Metadata[Targets]:
        """The staging to add to: the staged targets, or the signed ones as version N+1."""
        staged = self.staged()
        if staged is not None:
            self.check_staged(staged)
            return staged
        targets = self.targets()
        targets.signed.version += 1
        return targets

    def director_target(self, publics: list[dict[str, Any]]) -> NewTarget:
        """:data:`DIRECTOR_TARGET` listing ``publics``, its file written into the targets directory."""
        data = json.dumps({"keys": publics}, sort_keys=True, indent=2).encode() + b"\n"
        sha = hashlib.sha256(data).hexdigest()
        dest = self.target_file(DIRECTOR_TARGET, sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dest, data)
        return NewTarget(DIRECTOR_TARGET, dest, len(data), sha, director_keys_custom(publics))

    def director_keys(self) -> list[dict[str, Any]]:
        """The director keys the current targets metadata lists (empty when it lists none)."""
        target = self.targets().signed.targets.get(DIRECTOR_TARGET)
        custom = target.custom if target is not None else {}
        return list((custom.get("edgefleet") or {}).get("keys") or [])

    def _bump_targets(self, targets: Metadata[Targets], created: list[Path]) -> None:
        targets.signed.version += 1
        targets.signed.expires = _now() + timedelta(seconds=self.config.targets_ttl_s)
        name = f"{targets.signed.version}.targets.json"
        created.append(self._write(targets, name, "targets"))
        self._link_targets(targets.signed.version, (self.metadata_dir / name).read_bytes(), created)

    def install_targets(self, targets: Metadata[Targets]) -> None:
        """Install targets signed elsewhere as they are, then bump snapshot and timestamp (caller
        holds the lock and has verified them)."""
        raw = targets.to_bytes(_SERIALIZER)
        write_atomic(self.metadata_dir / f"{targets.signed.version}.targets.json", raw)
        self._link_targets(targets.signed.version, raw, [])

    def _link_targets(self, version: int, raw: bytes, created: list[Path]) -> None:
        snapshot = self.snapshot()
        snapshot.signed.meta["targets.json"] = MetaFile(version=version, length=len(raw), hashes=_sha256(raw))
        self._bump_snapshot(snapshot, created)

    def _bump_snapshot(self, snapshot: Metadata[Snapshot], created: list[Path]) -> None:
        snapshot.signed.version += 1
        snapshot.signed.expires = _now() + timedelta(seconds=self.config.snapshot_ttl_s)
        name = f"{snapshot.signed.version}.snapshot.json"
        path = self._write(snapshot, name, "snapshot")
        created.append(path)
        self._bump_timestamp(snapshot.signed.version, path.read_bytes())

    def _bump_timestamp(self, snapshot_version: int, snapshot_raw: bytes) -> None:
        ts = self.timestamp()
        ts.signed.version += 1
        ts.signed.expires = _now() + timedelta(seconds=self.config.timestamp_ttl_s)
        ts.signed.snapshot_meta = MetaFile(
            version=snapshot_version, length=len(snapshot_raw), hashes=_sha256(snapshot_raw)
        )
        self._write(ts, "timestamp.json", "timestamp")

    def discard(self, created: Sequence[Path]) -> None:
        """Undo :meth:`add_targets`: restore the old timestamp (or staging), remove the new files."""
        if self.previous_timestamp is not None:
            write_atomic(self.metadata_dir / "timestamp.json", self.previous_timestamp)
        if self.staged_path in created and self._staged_before is not None:
            (before,) = self._staged_before
            if before is None:
                self.staged_path.unlink(missing_ok=True)
            else:
                write_atomic(self.staged_path, before)
        for path in created:
            if path != self.staged_path:
                path.unlink(missing_ok=True)

    def refresh_if_needed(self) -> bool:
        """Re-sign timestamp (and snapshot) when half their lifetime is gone, and with the targets key
        online the targets too; cheap when fresh. With the targets key offline, a re-signing logs a
        warning once the signed targets expire within :data:`TARGETS_WARN_S` (the offline key must
        renew them: ``ota-server targets stage-refresh``, then a signing)."""
        path = self.metadata_dir / "timestamp.json"
        mtime = path.stat().st_mtime_ns
        if self._ts_cache is None or self._ts_cache[0] != mtime:
            # every targets change writes a new timestamp, so its mtime keys the targets expiry too
            self._ts_cache = (mtime, self.timestamp().signed.expires, self.targets().signed.expires)
        _, ts_expires, targets_expires = self._ts_cache
        if not self._timestamp_due(ts_expires) and not self._targets_due(targets_expires):
            return False
        with self.locked():
            ts = self.timestamp()
            targets = self.targets()
            if self._targets_due(targets.signed.expires):
                self._bump_targets(targets, [])  # snapshot and timestamp follow
            elif not self._timestamp_due(ts.signed.expires):
                return False  # another worker re-signed it while we waited
            else:
                snapshot = self.snapshot()
                if snapshot.signed.expires - _now() <= timedelta(seconds=self.config.snapshot_ttl_s / 2):
                    self._bump_snapshot(snapshot, [])
                else:
                    raw = (self.metadata_dir / f"{snapshot.signed.version}.snapshot.json").read_bytes()
                    self._bump_timestamp(snapshot.signed.version, raw)
                if self.offline_targets and targets.signed.expires - _now() <= timedelta(seconds=TARGETS_WARN_S):
                    log.warning(
                        "the signed TUF targets expire at %s and the targets key is offline: run `ota-server "
                        "targets stage-refresh --data-dir %s`, then sign it (%s)",
                        targets.signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        self.config.data_dir,
                        OFFLINE_TARGETS_HINT,
                    )
        self._ts_cache = None
        return True

    def _timestamp_due(self, expires: datetime) -> bool:
        return expires - _now() <= timedelta(seconds=self.config.timestamp_ttl_s / 2)

    def _targets_due(self, expires: datetime) -> bool:
        """Whether the server re-signs the targets now: the key is online, half their lifetime gone."""
        if expires - _now() > timedelta(seconds=self.config.targets_ttl_s / 2):
            return False
        return not self.offline_targets


def _sha256(data: bytes) -> dict[str, str]:
    return {"sha256": hashlib.sha256(data).hexdigest()}


def create_repository(
    config: ServerConfig, *, root_key_path: Path, targets_key_path: Path | None = None
) -> Metadata[Root]:
    """Write version 1 of every role; keys must already exist (see :mod:`ota_server.cli`).
    ``targets_key_path``: the offline targets key (default: ``keys/targets.pem``)."""
    config.metadata_dir.mkdir(parents=True, exist_ok=True)
    config.targets_dir.mkdir(parents=True, exist_ok=True)
    now = _now()
    root = Metadata(Root(expires=now + timedelta(seconds=config.root_ttl_s), consistent_snapshot=True))
    targets_key = load_private(targets_key_path or config.keys_dir / "targets.pem")
    root.signed.add_key(tuf_public(targets_key), "targets")
    for role in ("snapshot", "timestamp"):
        root.signed.add_key(tuf_public(load_private(config.keys_dir / f"{role}.pem")), role)
    root_key = load_private(root_key_path)
    root.signed.add_key(tuf_public(root_key), "root")
    root.sign(tuf_signer(root_key))
    write_atomic(config.metadata_dir / "1.root.json", root.to_bytes(_SERIALIZER))

    repo = Repository(config)
    repo._targets_signers = [tuf_signer(targets_key)]
    targets = Metadata(Targets(expires=now + timedelta(seconds=config.targets_ttl_s)))
    director = config.keys_dir / "director.pem"
    if director.exists():  # devices learn the director key from TUF (see rotate_director)
        t = repo.director_target([director_public_json(load_private(director).public_key())])
        targets.signed.targets[t.path] = TargetFile(t.length, {"sha256": t.sha256}, t.path, {"custom": t.custom})
    repo._write(targets, "1.targets.json", "targets")
    traw = (config.metadata_dir / "1.targets.json").read_bytes()
    snapshot = Metadata(Snapshot(expires=now + timedelta(seconds=config.snapshot_ttl_s)))
    snapshot.signed.meta["targets.json"] = MetaFile(version=1, length=len(traw), hashes=_sha256(traw))
    repo._write(snapshot, "1.snapshot.json", "snapshot")
    sraw = (config.metadata_dir / "1.snapshot.json").read_bytes()
    ts = Metadata(
        Timestamp(
            expires=now + timedelta(seconds=config.timestamp_ttl_s),
            snapshot_meta=MetaFile(version=1, length=len(sraw), hashes=_sha256(sraw)),
        )
    )
    repo._write(ts, "timestamp.json", "timestamp")
    return root


def resign_root(config: ServerConfig, *, root_key_path: Path, expires_days: int) -> Path:
    """Write root version N+1 with a new expiry, signed by the (offline) root key.

    Raises:
        SetupError: the key file cannot be loaded. RepositoryError: it is not this repository's
            root key, or root cannot be signed.
    """
    repo = Repository(config)
    with repo.locked():
        root = _signed_root(repo.root(), root_key_path, expires_days)
        path = config.metadata_dir / f"{root.signed.version}.root.json"
        write_atomic(path, root.to_bytes(_SERIALIZER))
    return path


def _signed_root(root: Metadata[Root], root_key_path: Path, expires_days: int | None) -> Metadata[Root]:
    """``root`` as version N+1 signed by the root key at ``root_key_path``.

    Raises:
        SetupError: the key file cannot be loaded. RepositoryError: it is not this repository's
            root key, or root cannot be signed.
    """
    root_key = load_private(root_key_path)
    keyid = tuf_public(root_key).keyid
    if keyid not in root.signed.roles["root"].keyids:
        raise RepositoryError(f"{root_key_path} is not this repository's root key (keyid {keyid})")
    root.signed.version += 1
    if expires_days is not None:
        root.signed.expires = _now() + timedelta(days=expires_days)
    root.signatures.clear()
    try:
        root.sign(tuf_signer(root_key))
    except TufRepositoryError as e:
        raise RepositoryError(f"cannot sign root: {e}") from e
    return root


def rotate_key(config: ServerConfig, role: str, *, root_key_path: Path) -> dict[str, Any]:
    """Replace the online key of ``role`` (timestamp, snapshot or targets) with a new one.

    Root version N+1, signed by the root key, lists the new key and no longer the old one;
    devices reach it through TUF's root chain. The role's metadata (and what depends on it:
    snapshot, timestamp) is re-signed first with both keys, so a device verifies it under root N
    and N+1 alike while the new root spreads; from the next re-signing on only the new key
    signs, and metadata signed by the old key alone no longer verifies under root N+1. The new
    key file replaces the old one (0600). Returns the role, both keyids and the new root version.

    Raises:
        SetupError: the root key file cannot be loaded. RepositoryError: ``role`` is not an
            online role, the key is not this repository's root key, or the repository cannot
            be written.
    """
    if role not in ONLINE_ROLES:
        raise RepositoryError(f"role must be one of {list(ONLINE_ROLES)}, got {role!r}")
    repo = Repository(config)
    if role == "targets" and repo.offline_targets:
        raise RepositoryError(
            "the targets key is offline: rotating it needs the old and the new key material "
            "(ota-server keys rotate --role targets --targets-key OLD --new-key-out PATH)"
        )
    key_path = config.keys_dir / f"{role}.pem"
    staged = config.keys_dir / f"{role}.pem.new"
    with repo.locked():
        root = repo.root()
        old_signer = repo._signer(role)
        old_keyid = old_signer.public_key.keyid
        new_key = generate_key(staged)
        new_public = tuf_public(new_key)
        root.signed.revoke_key(old_keyid, role)
        root.signed.add_key(new_public, role)
        root = _signed_root(root, root_key_path, None)
        os.replace(staged, key_path)  # from now on every worker signs with the new key
        repo._also_sign = {role: [old_signer]}
        try:
            if role == "targets":
                repo._bump_targets(repo.targets(), [])
            elif role == "snapshot":
                repo._bump_snapshot(repo.snapshot(), [])
            else:
                snapshot = repo.snapshot()
                raw = (config.metadata_dir / f"{snapshot.signed.version}.snapshot.json").read_bytes()
                repo._bump_timestamp(snapshot.signed.version, raw)
        finally:
            repo._also_sign = {}
        write_atomic(config.metadata_dir / f"{root.signed.version}.root.json", root.to_bytes(_SERIALIZER))
    return {"role": role, "old_keyid": old_keyid, "new_keyid": new_public.keyid, "root_version": root.signed.version}


def rotate_director(config: ServerConfig, *, bump_generation: Callable[[], None]) -> dict[str, Any]:
    """Replace the director key; devices learn the new one from TUF (:data:`DIRECTOR_TARGET`).

    The targets metadata first lists the old and the new key, then the new key file replaces the
    old one (every worker signs with it from its next assignment; ``bump_generation`` makes them
    drop the assignments the old key signed), then the targets metadata lists the new key alone:
    an assignment the old key signs no longer verifies on a device that refreshed TUF.
    Returns both keyids.

    Raises:
        RepositoryError: the repository cannot be written. SetupError: the key cannot be read.
    """
    repo = Repository(config)
    if repo.offline_targets:
        raise RepositoryError("the targets key is offline: a director rotation goes through the staged targets")
    key_path = config.keys_dir / "director.pem"
    staged = config.keys_dir / "director.pem.new"
    with repo.locked():
        old = director_public_json(load_private(key_path).public_key())
        new = director_public_json(generate_key(staged).public_key())
        repo.add_targets([repo.director_target([new, old])])
        os.replace(staged, key_path)
        bump_generation()
        repo.add_targets([repo.director_target([new])])
    write_atomic(config.provisioning_dir / "director.pub.json", json.dumps(new, indent=2).encode() + b"\n")
    return {"role": "director", "old_keyid": old["keyid"], "new_keyid": new["keyid"]}
