"""The TUF image repository on disk, kept with python-tuf's ``tuf.api.metadata``.

Layout (consistent snapshots)::

    tuf/metadata/1.root.json  N.targets.json  M.snapshot.json  timestamp.json
    tuf/targets/<name>/<version>/<sha256>.<file>      hard links into artifacts/

Every change writes new versioned files first and replaces ``timestamp.json`` last (temp file +
``os.replace``), all under an ``fcntl`` lock shared by every worker, so a reader never sees a
half-written repository. The root key may live offline: only ``root_signer`` needs it.

This module does not know about releases or the database; :mod:`ota_server.fleet.publish` drives it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
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
    "Repository",
    "create_repository",
    "file_lock",
    "resign_root",
    "rotate_director",
    "rotate_key",
]

ONLINE_ROLES = ("timestamp", "snapshot", "targets")  # keys that sign online and ``rotate_key`` rotates

_SERIALIZER = JSONSerializer(compact=True)


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
        self._ts_cache: tuple[int, datetime] | None = None  # (mtime_ns, expires)
        self._also_sign: dict[str, Sequence[Signer]] = {}

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

    # ------------------------------------------------------------------ writing
    @contextmanager
    def locked(self) -> Iterator[None]:
        with file_lock(self._lock_path):
            yield

    def _signer(self, role: str) -> Signer:
        return tuf_signer(load_private(self.config.keys_dir / f"{role}.pem"))

    def _write(self, md: Metadata[Any], name: str, role: str) -> Path:
        md.signatures.clear()
        md.sign(self._signer(role))
        for extra in self._also_sign.get(role, ()):  # a key rotation signs with the old key too
            md.sign(extra, append=True)
        path = self.metadata_dir / name
        write_atomic(path, md.to_bytes(_SERIALIZER))
        return path

    def target_file(self, path: str, sha256: str) -> Path:
        """Where the consistent-snapshot file of target ``path`` with digest ``sha256`` lies."""
        return self.targets_dir / Path(path).parent / f"{sha256}.{Path(path).name}"

    def add_targets(self, new: Sequence[NewTarget]) -> list[Path]:
        """Link target files and write targets, snapshot, timestamp (caller holds the lock).

        Returns every file created, so a caller whose transaction fails can remove them
        (:meth:`discard`). ``timestamp.json`` is replaced last; its previous bytes are kept in
        ``self.previous_timestamp`` for :meth:`discard`.
        """
        created: list[Path] = []
        self.previous_timestamp = (self.metadata_dir / "timestamp.json").read_bytes()
        try:
            targets = self.targets()
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
            self._bump_targets(targets, created)
        except BaseException:
            self.discard(created)
            raise
        return created

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
        raw = (self.metadata_dir / name).read_bytes()
        snapshot = self.snapshot()
        snapshot.signed.meta["targets.json"] = MetaFile(
            version=targets.signed.version, length=len(raw), hashes=_sha256(raw)
        )
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
        """Undo :meth:`add_targets`: restore the old timestamp, remove the new files."""
        previous = getattr(self, "previous_timestamp", None)
        if previous is not None:
            write_atomic(self.metadata_dir / "timestamp.json", previous)
        for path in created:
            path.unlink(missing_ok=True)

    def refresh_if_needed(self) -> bool:
        """Re-sign timestamp (and snapshot) when half their lifetime is gone; cheap when fresh."""
        path = self.metadata_dir / "timestamp.json"
        mtime = path.stat().st_mtime_ns
        if self._ts_cache is None or self._ts_cache[0] != mtime:
            self._ts_cache = (mtime, self.timestamp().signed.expires)
        if self._ts_cache[1] - _now() > timedelta(seconds=self.config.timestamp_ttl_s / 2):
            return False
        with self.locked():
            ts = self.timestamp()
            if ts.signed.expires - _now() > timedelta(seconds=self.config.timestamp_ttl_s / 2):
                return False  # another worker re-signed it while we waited
            snapshot = self.snapshot()
            if snapshot.signed.expires - _now() <= timedelta(seconds=self.config.snapshot_ttl_s / 2):
                self._bump_snapshot(snapshot, [])
            else:
                raw = (self.metadata_dir / f"{snapshot.signed.version}.snapshot.json").read_bytes()
                self._bump_timestamp(snapshot.signed.version, raw)
        self._ts_cache = None
        return True


def _sha256(data: bytes) -> dict[str, str]:
    return {"sha256": hashlib.sha256(data).hexdigest()}


def create_repository(config: ServerConfig, *, root_key_path: Path) -> Metadata[Root]:
    """Write version 1 of every role; keys must already exist (see :mod:`ota_server.cli`)."""
    config.metadata_dir.mkdir(parents=True, exist_ok=True)
    config.targets_dir.mkdir(parents=True, exist_ok=True)
    now = _now()
    root = Metadata(Root(expires=now + timedelta(seconds=config.root_ttl_s), consistent_snapshot=True))
    for role in ("targets", "snapshot", "timestamp"):
        root.signed.add_key(tuf_public(load_private(config.keys_dir / f"{role}.pem")), role)
    root_key = load_private(root_key_path)
    root.signed.add_key(tuf_public(root_key), "root")
    root.sign(tuf_signer(root_key))
    write_atomic(config.metadata_dir / "1.root.json", root.to_bytes(_SERIALIZER))

    repo = Repository(config)
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
