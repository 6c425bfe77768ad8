"""The director: which release each device must run, as a signed assignment (contract §8).

Unchanged polls must be cheap: the signed assignment is cached per (device, nonce) in this
worker together with the *version* it was computed at: the fleet *generation*, one row that
every change able to alter many devices' assignments bumps (publish, rollout change, a rollout's
floor pinned by an enrollment, a device's installed release outside every rollout), and the
device's own *assignment revision*, bumped by a change that alters that device's assignment
alone (its hardware). So one device's ``PUT /hardware``, or an enrollment, re-signs that
device's assignment and nobody else's. A poll whose version still matches — both read in one
statement, :meth:`ota_server.storage.store.Store.poll_version` — is answered from the cache — no
signing, no write — and with ``If-None-Match`` as 304. Issue times sit on a grid of half the lifetime, so
all workers produce byte-identical assignments (and ETags) within a window; an assignment is
re-signed when its window ends.

A freshly signed assignment of a rollout names its digest (:func:`models.device_reports.assignment_digest`,
the same for every re-signing): the assignment endpoint records it per device and rollout, and
only reports naming a recorded digest count in the rollout (:mod:`ota_server.fleet.ingest`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Connection

from models.bundle import Manifest
from models.device_reports import assignment_digest
from models.hardware import HardwareProfile, NoCompatibleVariant, runnable_variants
from ota_server.errors import RecordNotFound
from ota_server.rules import rollouts as ro
from ota_server.storage import store as st
from ota_server.trust.keys import load_private, sign_envelope

__all__ = [
    "MAX_ALTERNATES",
    "Catalog",
    "Director",
    "Signed",
    "Target",
    "Version",
    "build_signed",
    "pick_release",
    "validity_start",
]

log = logging.getLogger(__name__)
Version = tuple[int, int]  # (fleet generation, the device's assignment revision) a cached assignment is valid at
MAX_ALTERNATES = 8  # alternates one assignment names at most; the agent refuses more (docs/contracts.md §8)


@dataclass(frozen=True)
class Signed:
    etag: str  # quoted, as sent in the ETag header
    body: bytes
    renew_at: float  # time.time() after which the assignment is re-signed
    # the rollout it assigns and its digest (models.device_reports), set when freshly signed:
    # the caller records the issue (the device's reports for the rollout count only then)
    rollout_id: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class Target:
    rollout_id: str | None
    release: int | None  # release counter
    gates: Mapping[str, Any] | None


def validity_start(now: float, ttl_s: int) -> int:
    """Assignments are issued on a grid of ``ttl_s / 2``: every worker that signs the same content
    in the same window produces the same bytes (Ed25519 is deterministic), hence the same ETag,
    and every assignment handed out is valid for at least half its lifetime."""
    window = max(1, ttl_s // 2)
    return int(now) - int(now) % window


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Catalog:
    """Per-worker read cache: releases are immutable once signed (cached for good; one awaiting
    the offline targets signature is read again), the assigning rollouts of a group are cached
    for one fleet generation."""

    def __init__(self) -> None:
        self._releases: dict[int, tuple[dict[str, Any], Manifest, list[dict[str, Any]]]] = {}
        self._rollouts: dict[str, list[dict[str, Any]]] = {}
        self._gen: int | None = None
        self._lock = threading.Lock()

    def release(self, conn: Connection, counter: int) -> tuple[dict[str, Any], Manifest, list[dict[str, Any]]]:
        """The release row, its manifest and its files.

        Raises:
            RecordNotFound: no release has that counter.
        """
        hit = self._releases.get(counter)
        if hit is None:
            row = st.get_release(conn, counter)
            hit = (row, Manifest.from_dict(row["manifest"]), st.release_files(conn, counter))
            if not row.get("awaiting_signature"):
                with self._lock:
                    self._releases[counter] = hit
        return hit

    def rollouts(self, conn: Connection, group: str, gen: int | None) -> list[dict[str, Any]]:
        with self._lock:
            if gen is None or gen != self._gen:
                self._rollouts = {}
                self._gen = gen
            hit = self._rollouts.get(group)
        if hit is None:
            hit = st.list_rollouts(conn, statuses=ro.ASSIGNING, group=group)
            if gen is not None:
                with self._lock:
                    if gen == self._gen:
                        self._rollouts[group] = hit
        return hit


def pick_release(conn: Connection, device: Mapping[str, Any], catalog: Catalog, gen: int | None) -> Target:
    """The newest assigning rollout whose current stage includes the device and whose release TUF
    lists (not one awaiting the offline targets signature), else what it runs."""
    for rollout in reversed(catalog.rollouts(conn, device["group_name"], gen)):
        if ro.assigns(rollout, device) and not _awaits_signature(conn, catalog, rollout["release"]):
            return Target(rollout["id"], rollout["release"], rollout["gates"])
    if device["running_release"] is not None:
        return Target(None, device["running_release"], None)
    return Target(None, None, None)


def _awaits_signature(conn: Connection, catalog: Catalog, counter: int) -> bool:
    try:
        awaiting = bool(catalog.release(conn, counter)[0].get("awaiting_signature"))
    except RecordNotFound:
        return False  # build_signed logs the unknown release
    if awaiting:
        log.debug("release %s awaits the offline targets signature: the director holds it back", counter)
    return awaiting


def build_signed(
    conn: Connection,
    device: Mapping[str, Any],
    nonce: str,
    *,
    ttl_s: int,
    catalog: Catalog | None = None,
    gen: int | None = None,
) -> dict[str, Any]:
    """The ``signed`` part of a device's assignment."""
    catalog = catalog or Catalog()
    issued = datetime.fromtimestamp(validity_start(time.time(), ttl_s), timezone.utc)
    signed: dict[str, Any] = {
        "_type": "edgefleet-assignment",
        "spec_version": "1",
        "device_id": device["id"],
        "nonce": nonce,
        "issued": _iso(issued),
        "expires": _iso(issued + timedelta(seconds=ttl_s)),
        "rollout_id": None,
        "release": None,
        "manifest": None,
        "target": None,
        "alternates": [],
        "gates": None,
    }
    choice = pick_release(conn, device, catalog, gen)
    if choice.release is None:
        return signed
    try:
        release, manifest, files = catalog.release(conn, choice.release)
    except RecordNotFound:
        log.warning("device %s runs release %s, which this server does not know", device["id"], choice.release)
        return signed
    if release.get("awaiting_signature"):  # TUF does not list it yet: no device could verify it
        return signed
    try:
        variants = runnable_variants(manifest, HardwareProfile.from_dict(device["hardware"]))
    except NoCompatibleVariant as e:
        log.warning("device %s gets no target: %s", device["id"], e)
        return signed
    mfile = next(f for f in files if f["kind"] == "manifest")
    by_variant = {f["variant"]: f for f in files if f["kind"] == "variant"}
    gates = manifest.gates.tightened_by(choice.gates)  # an older rollout may hold looser overrides
    signed.update(
        rollout_id=choice.rollout_id,
        release={"counter": release["counter"], "name": release["name"], "version": release["version"]},
        manifest={"path": mfile["path"], "length": mfile["length"], "hashes": {"sha256": mfile["sha256"]}},
        target=_target(by_variant[variants[0].id]),
        # the device times these against the primary in its child-process gate and serves the fastest
        # that passes; the selection order stays the preference and the fallback
        alternates=[{"variant": v.id, "target": _target(by_variant[v.id])} for v in variants[1:] if v.id in by_variant][
            :MAX_ALTERNATES
        ],
        gates=dataclasses.asdict(gates),
    )
    return signed


def _target(file: Mapping[str, Any]) -> dict[str, Any]:
    """A release file as the assignment names it: exactly its TUF target (path, length, hashes, custom)."""
    return {
        "path": file["path"],
        "length": file["length"],
        "hashes": {"sha256": file["sha256"]},
        "custom": file["custom"],
        "variant": file["variant"],
    }


class Director:
    """Signs assignments and caches them (see the module docstring).

    Two cache levels: a dict in this worker, then a spool directory shared by all workers of the
    data directory (``run/assignments/<device id>``, written temp-then-rename), so a device whose
    keep-alive connection lands on another worker still gets its 304 without a database query or
    a signature. Both levels are only trusted at the current fleet generation.
    """

    def __init__(
        self,
        key: Ed25519PrivateKey,
        *,
        ttl_s: int,
        spool_dir: Path | None = None,
        max_cache: int = 200_000,
        key_path: Path | None = None,
    ) -> None:
        self._key = key
        self._key_path = key_path  # re-read when it changes: `ota-server keys rotate --role director`
        self._key_file = _file_id(key_path)
        self._ttl_s = ttl_s
        self._spool = spool_dir
        self._max_cache = max_cache
        self._cache: dict[str, tuple[str, Version, Signed]] = {}  # device id -> (nonce, (gen, rev), signed)
        self._lock = threading.Lock()
        self._issued: set[tuple[str, str, str]] = set()  # (device, rollout, digest) recorded here
        self.signatures = 0
        self.catalog = Catalog()
        if spool_dir is not None:
            spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def issue_recorded(self, device_id: str, rollout_id: str, digest: str) -> bool:
        """Whether this worker recorded that issue already (:meth:`remember_issue`); a record
        made twice, by two workers, changes nothing."""
        return (device_id, rollout_id, digest) in self._issued

    def remember_issue(self, device_id: str, rollout_id: str, digest: str) -> None:
        """Note that the issue is recorded in the store (bounded: forgotten past ``max_cache``)."""
        with self._lock:
            if len(self._issued) >= self._max_cache:
                self._issued.clear()
            self._issued.add((device_id, rollout_id, digest))

    def cached(self, device_id: str, nonce: str, gen: int, rev: int = 0) -> Signed | None:
        """The assignment signed for this device and nonce at fleet generation ``gen`` and device
        revision ``rev`` (:meth:`ota_server.storage.store.Store.poll_version`), if it is still
        within its window; None otherwise."""
        version = (gen, rev)
        hit = self._cache.get(device_id)
        if hit is None or hit[0] != nonce or hit[1] != version:
            hit = self._from_spool(device_id)
            if hit is None or hit[0] != nonce or hit[1] != version:
                return None
            self._remember(device_id, hit)
        if hit[2].renew_at < time.time():
            return None
        return hit[2]

    def sign(self, conn: Connection, device: Mapping[str, Any], nonce: str, gen: int, rev: int = 0) -> Signed:
        """Sign the device's assignment for ``nonce`` and cache it at ``(gen, rev)``, read before
        ``device`` was (a change after that read bumps one of them again)."""
        signed = build_signed(conn, device, nonce, ttl_s=self._ttl_s, catalog=self.catalog, gen=gen)
        envelope = sign_envelope(self._signing_key(), signed)
        body = json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()
        rollout_id = signed.get("rollout_id")
        result = Signed(
            etag=_etag(body),
            body=body,
            renew_at=validity_start(time.time(), self._ttl_s) + max(1, self._ttl_s // 2),
            rollout_id=rollout_id,
            digest=assignment_digest(signed) if rollout_id else None,
        )
        self._remember(device["id"], (nonce, (gen, rev), result))
        self._to_spool(device["id"], (nonce, (gen, rev), result))
        with self._lock:
            self.signatures += 1
        return result

    def _signing_key(self) -> Ed25519PrivateKey:
        """The director key, re-read when its file was replaced (a rotation); the rotation bumps
        the fleet generation, so nothing the old key signed is served from the caches after it.

        Raises:
            SetupError: the replaced key file cannot be read.
        """
        current = _file_id(self._key_path)
        if self._key_path is not None and current is not None and current != self._key_file:
            key = load_private(self._key_path)
            with self._lock:
                self._key, self._key_file = key, current
        return self._key

    def _remember(self, device_id: str, entry: tuple[str, Version, Signed]) -> None:
        with self._lock:
            if len(self._cache) >= self._max_cache:
                self._cache.clear()
            self._cache[device_id] = entry  # one live nonce per device

    def _to_spool(self, device_id: str, entry: tuple[str, Version, Signed]) -> None:
        """Replace the device's spool file: unlink, then create exclusively. Not a rename — ext4
        flushes data on rename-over and truncate (auto_da_alloc), costing milliseconds per poll;
        a reader that catches a half-written file fails the ETag check and treats it as a miss."""
        if self._spool is None:
            return
        nonce, (gen, rev), s = entry
        header = json.dumps({"nonce": nonce, "gen": gen, "rev": rev, "etag": s.etag, "renew_at": s.renew_at}).encode()
        path = self._spool / device_id
        try:
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # another worker wrote it in between: equally valid
        except OSError as e:  # the spool is an optimisation; the poll is still answered
            log.warning("cannot write the assignment spool %s: %s", path, e)
            return
        with os.fdopen(fd, "wb") as fh:
            fh.write(header + b"\n" + s.body)

    def _from_spool(self, device_id: str) -> tuple[str, Version, Signed] | None:
        if self._spool is None:
            return None
        try:
            raw = (self._spool / device_id).read_bytes()
            header_raw, _, body = raw.partition(b"\n")
            header = json.loads(header_raw)
            etag = str(header["etag"])
            if etag != _etag(body):
                return None  # torn read while another worker rewrites it
            version = (int(header["gen"]), int(header.get("rev", 0)))
            return str(header["nonce"]), version, Signed(etag, body, float(header["renew_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:40] + '"'


def _file_id(path: Path | None) -> tuple[int, int] | None:
    """(inode, mtime) of ``path``: a replaced file has another; None when it cannot be read."""
    if path is None:
        return None
    try:
        st_ = path.stat()
    except OSError:
        return None
    return st_.st_ino, st_.st_mtime_ns
