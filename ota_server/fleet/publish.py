"""Publishing a release: receive a bundle tar, extract it safely, validate, commit atomically.

The upload is streamed to ``tmp/`` with a byte limit (413 past it), extracted member by member
(plain regular files with plain names only: no paths, no links, no devices, no sparse or
contiguous members, which can extract to far more than they take in the tar; at most
:data:`MAX_MEMBERS` of them and, together, no more bytes than the upload limit), and the manifest is
validated with :mod:`models.bundle`, which checks every variant's length and sha256. Then, under
the repository lock and in one database transaction, the artifacts are moved into the content
store, the release row is written and the TUF targets/snapshot/timestamp are re-signed. Any
failure undoes the file moves and the metadata writes, so a failed publish leaves no trace:
nothing in ``tmp/``, the artifact store or the metadata. Error messages name tar members and
bundle files, never a path of the server's own.

With the targets key offline the targets change is staged instead of signed (same lock, same
undo): the release is stored *awaiting signature* until ``ota-server targets sign`` (or
``import``) installs signed targets that list it (:func:`settle_signed`); no rollout may use it
before then. The flag lives in the release row so rollouts and the director read it in their own
transaction; :func:`settle_signed` derives it again from the signed targets, so a signing that
stopped before the database caught up is settled by the next ``targets sign`` or ``status``.

Not here: the HTTP side (the route in :mod:`ota_server.api.releases`) and the manifest rules
(:mod:`models.bundle`).
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from models.bundle import MANIFEST_NAME, BundleError, Manifest, read_bundle, semver_key, sha256_file
from ota_server.errors import BadRequest, Conflict, PayloadTooLarge
from ota_server.storage import store as st
from ota_server.storage.store import Store
from ota_server.trust.artifacts import ArtifactStore
from ota_server.trust.repository import OFFLINE_TARGETS_HINT, NewTarget, Repository

__all__ = [
    "MAX_MEMBERS",
    "FileSpec",
    "Publisher",
    "custom_fields",
    "extract",
    "file_specs",
    "receive",
    "release_view",
    "settle_signed",
    "validate",
    "with_counter",
]

log = logging.getLogger(__name__)
CHUNK = 1 << 20  # bytes read per step of the upload
MAX_MEMBERS = 256  # tar members one bundle may hold (the manifest and its variants)
_PLAIN = (tarfile.REGTYPE, tarfile.AREGTYPE)  # not GNUTYPE_SPARSE or CONTTYPE, which tarfile also calls files


@dataclass(frozen=True)
class FileSpec:
    path: str  # TUF target path
    kind: str  # manifest | variant
    variant: str | None
    length: int
    sha256: str
    local: Path


def receive(stream: IO[bytes], *, content_length: int | None, limit: int, tmp_dir: Path) -> Path:
    """Stream the request body to a temp file.

    Raises:
        PayloadTooLarge: the body is longer than ``limit`` bytes. BadRequest: it ended before
            ``content_length`` bytes.
    """
    if content_length is not None and content_length > limit:
        raise PayloadTooLarge(f"upload is {content_length} bytes, the limit is {limit}", field="body")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload.", suffix=".tar", dir=tmp_dir)
    path = Path(name)
    total = 0
    try:
        with open(fd, "wb") as fh:
            while chunk := stream.read(CHUNK):
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes", field="body")
                fh.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if content_length is not None and total != content_length:
        path.unlink(missing_ok=True)
        raise BadRequest(f"upload ended after {total} of {content_length} bytes", field="body")
    return path


def _member_name(member: tarfile.TarInfo) -> str | None:
    """The plain file name of a member, None for the root directory entry; BadRequest otherwise."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    if name in ("", ".") and member.isdir():
        return None
    if member.issym() or member.islnk():
        raise BadRequest(f"tar member {member.name!r} is a link; bundles hold regular files only", field="body")
    if member.issparse() or member.type == tarfile.GNUTYPE_SPARSE:
        raise BadRequest(f"tar member {member.name!r} is a sparse file; bundles hold regular files only", field="body")
    if member.type not in _PLAIN:
        raise BadRequest(f"tar member {member.name!r} is not a regular file", field="body")
    if not name or "/" in name or "\\" in name or name in ("..", ".") or name.startswith("."):
        raise BadRequest(
            f"tar member {member.name!r} must be a plain file name at the top of the archive", field="body"
        )
    return name


def extract(tar_path: Path, dest: Path, *, limit: int | None = None) -> None:
    """Extract a bundle tar into ``dest`` (which must be empty) refusing anything unsafe.

    ``limit``: the most bytes all members may extract to together (default: the tar's own
    size, which regular members cannot outgrow).

    Raises:
        BadRequest: not an uncompressed tar, more than :data:`MAX_MEMBERS` members, or a
            member that is a link, not a plain regular file (sparse included), not a plain file
            name at the top of the archive, or there twice. PayloadTooLarge: the members
            extract to more than ``limit`` bytes.
    """
    budget = tar_path.stat().st_size if limit is None else limit
    total = 0
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            seen: set[str] = set()
            for count, member in enumerate(tar, 1):
                if count > MAX_MEMBERS:
                    raise BadRequest(f"tar holds more than {MAX_MEMBERS} members", field="body")
                name = _member_name(member)
                if name is None:
                    continue
                if name in seen:
                    raise BadRequest(f"tar holds {name!r} twice", field="body")
                seen.add(name)
                total += member.size
                if total > budget:
                    raise PayloadTooLarge(
                        f"tar member {member.name!r} takes the bundle past the limit of {budget} bytes", field="body"
                    )
                src = tar.extractfile(member)
                if src is None:
                    raise BadRequest(f"cannot read tar member {member.name!r}", field="body")
                with src, open(dest / name, "xb") as out:
                    _copy(src, out, member)
    except tarfile.TarError as e:
        raise BadRequest(f"body is not a valid uncompressed tar archive: {e}", field="body") from e


def _copy(src: IO[bytes], out: IO[bytes], member: tarfile.TarInfo) -> None:
    """Copy one member, never more than the size its header declares (already counted)."""
    left = member.size
    while left > 0:
        chunk = src.read(min(CHUNK, left))
        if not chunk:
            raise BadRequest(f"tar member {member.name!r} ends before its {member.size} bytes", field="body")
        out.write(chunk)
        left -= len(chunk)


def validate(dest: Path) -> Manifest:
    """Validate the extracted bundle; every file must be the manifest or a variant.

    Raises:
        BadRequest: an invalid manifest (naming its field) or a file the manifest does not name.
    """
    if not (dest / MANIFEST_NAME).is_file():
        raise BadRequest(f"the bundle holds no {MANIFEST_NAME}", field=MANIFEST_NAME)
    try:
        manifest = read_bundle(dest, verify=True)
    except BundleError as e:
        # the message may name the staging directory: the bundle's files are named relative to it
        message = str(e).replace(f" from {dest}", " from the bundle").replace(str(dest), "the bundle")
        raise BadRequest(f"invalid bundle: {message}", field=e.field or MANIFEST_NAME) from e
    expected = {MANIFEST_NAME} | {v.file for v in manifest.variants}
    extra = sorted(p.name for p in dest.iterdir() if p.name not in expected)
    if extra:
        raise BadRequest(f"bundle holds files its manifest does not name: {extra}", field="body")
    return manifest


def custom_fields(manifest: Manifest, counter: int, variant_id: str | None) -> dict[str, Any]:
    requires = manifest.variant(variant_id).requires.to_dict() if variant_id else None
    return {
        "edgefleet": {
            "bundle": manifest.name,
            "version": manifest.version,
            "release": counter,
            "kind": "variant" if variant_id else "manifest",
            "variant": variant_id,
            "requires": requires,
        }
    }


def with_counter(custom: dict[str, Any], counter: int) -> dict[str, Any]:
    """``custom`` of a release file re-pointed at release ``counter`` (a rollback re-signs its targets so)."""
    edgefleet = dict(custom.get("edgefleet") or {})
    edgefleet["release"] = counter
    return {**custom, "edgefleet": edgefleet}


def file_specs(manifest: Manifest, dest: Path) -> list[FileSpec]:
    base = f"{manifest.name}/{manifest.version}"
    mpath = dest / MANIFEST_NAME
    specs = [FileSpec(f"{base}/{MANIFEST_NAME}", "manifest", None, mpath.stat().st_size, sha256_file(mpath), mpath)]
    for v in manifest.variants:
        specs.append(FileSpec(f"{base}/{v.file}", "variant", v.id, v.size, v.sha256, dest / v.file))
    return specs


class Publisher:
    """Turns an uploaded tar into a release; see the module docstring for the guarantees."""

    def __init__(
        self,
        store: Store,
        repo: Repository,
        artifacts: ArtifactStore,
        tmp_dir: Path,
        *,
        max_bytes: int | None = None,
    ) -> None:
        self.store = store
        self.repo = repo
        self.artifacts = artifacts
        self.tmp_dir = tmp_dir
        self.max_bytes = max_bytes  # what a bundle may extract to; None: its tar's size
        if repo.offline_targets:
            log.info("the TUF targets key is offline: publishes are staged until `%s`", OFFLINE_TARGETS_HINT)

    def publish_tar(self, tar_path: Path, *, actor: str) -> dict[str, Any]:
        """Publish the bundle in ``tar_path`` (removed afterwards) as the next release.

        Raises:
            BadRequest: not a tar, or an invalid bundle. PayloadTooLarge: the members extract
                to more than ``max_bytes``. Conflict: the release exists, or its
                version is not above the model's latest. RepositoryError: the artifact store or
                the TUF repository could not be written; nothing of the release is left.
        """
        staging = self.tmp_dir / f"bundle.{uuid.uuid4().hex}"
        try:
            staging.mkdir(parents=True)
            extract(tar_path, staging, limit=self.max_bytes)
            manifest = validate(staging)
            return self._commit(manifest, staging, actor=actor)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            tar_path.unlink(missing_ok=True)

    def _check_version(self, conn: sa.Connection, manifest: Manifest) -> None:
        if st.release_by_version(conn, manifest.name, manifest.version) is not None:
            raise Conflict(f"{manifest.name}@{manifest.version} is already published", field="version")
        latest = st.latest_release(conn, manifest.name)
        if latest is not None and semver_key(manifest.version) <= semver_key(latest["version"]):
            raise Conflict(
                f"{manifest.name}@{manifest.version} is not newer than the latest release "
                f"{latest['version']}; publish a higher version",
                field="version",
            )

    def _commit(self, manifest: Manifest, staging: Path, *, actor: str) -> dict[str, Any]:
        specs = file_specs(manifest, staging)
        moved: list[Path] = []
        tuf_files: list[Path] = []
        with self.repo.locked():
            try:
                with self.store.tx() as conn:
                    st.lock(conn, "releases")  # the counter is global: one publish at a time
                    self._check_version(conn, manifest)
                    counter = st.next_counter(conn)
                    targets = []
                    for spec in specs:
                        path, created = self.artifacts.put(spec.local, spec.sha256)
                        if created:
                            moved.append(path)
                        custom = custom_fields(manifest, counter, spec.variant)
                        targets.append(NewTarget(spec.path, path, spec.length, spec.sha256, custom))
                    release = {
                        "counter": counter,
                        "name": manifest.name,
                        "version": manifest.version,
                        "rollback_of": None,
                        "awaiting_signature": self.repo.offline_targets,
                        "manifest": manifest.to_dict(),
                        "created_at": st.utcnow(),
                        "created_by": actor,
                    }
                    st.insert_release(conn, release, _file_rows(specs, targets))
                    st.audit(
                        conn, actor, "release.publish", f"{manifest.name}@{manifest.version}", {"release": counter}
                    )
                    st.bump_generation(conn)
                    tuf_files = self.repo.add_targets(targets)
            except BaseException:
                if tuf_files:
                    self.repo.discard(tuf_files)
                for path in moved:
                    path.unlink(missing_ok=True)
                raise
        log.info("published %s@%s as release %d by %s", manifest.name, manifest.version, counter, actor)
        if release["awaiting_signature"]:
            log.info("release %d awaits the offline targets signature: %s", counter, OFFLINE_TARGETS_HINT)
        return release_view(release, _file_rows(specs, targets))


def _file_rows(specs: Iterable[FileSpec], targets: Iterable[NewTarget]) -> list[dict[str, Any]]:
    return [
        {
            "path": s.path,
            "kind": s.kind,
            "variant": s.variant,
            "length": s.length,
            "sha256": s.sha256,
            "custom": t.custom,
        }
        for s, t in zip(specs, targets, strict=True)
    ]


def release_view(release: dict[str, Any], files: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A release as the API shows it."""
    return {
        "counter": release["counter"],
        "name": release["name"],
        "version": release["version"],
        "rollback_of": release["rollback_of"],
        "awaiting_signature": bool(release.get("awaiting_signature")),
        "created_at": release["created_at"],
        "created_by": release["created_by"],
        "files": [
            {
                "path": f["path"],
                "kind": f["kind"],
                "variant": f["variant"],
                "length": f["length"],
                "hashes": {"sha256": f["sha256"]},
                "custom": f["custom"],
            }
            for f in files
        ],
    }


def settle_signed(conn: Connection, signed: Mapping[str, Any]) -> list[int]:
    """Mark signed every release awaiting signature whose files the signed targets list at its
    counter or a later one (a rollback re-points a path at a higher counter, never a lower);
    returns their counters. ``signed``: target path to its ``TargetFile``."""
    done = []
    for release in st.awaiting_releases(conn):
        counter = release["counter"]
        files = st.release_files(conn, counter)
        if files and all(_listed_from(signed.get(f["path"]), counter) for f in files):
            done.append(counter)
    st.mark_releases_signed(conn, done)
    return done


def _listed_from(info: Any, counter: int) -> bool:
    release = ((getattr(info, "custom", None) or {}).get("edgefleet") or {}).get("release")
    return isinstance(release, int) and release >= counter
