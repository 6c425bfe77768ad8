"""The offline targets key: what is staged, signing it, and rotations that need the key.

With the targets key offline (``ota-server init --offline-targets PATH``), every change to the TUF
targets is staged by :meth:`ota_server.trust.repository.Repository.add_targets` in
``tuf/staged/targets.json``: unsigned targets metadata, version N+1, holding every change since the
last signing. The offline step then signs it, either on the server with the key plugged in
(:func:`sign_staged`) or air-gapped (:func:`export_staged` → :func:`sign_file` on the offline
machine → :func:`import_signed`, which installs only a file whose signed part is exactly the
staging and whose signature verifies under root's targets key). Installing signed targets bumps
snapshot and timestamp with the online keys and clears the staging.

A director rotation with the targets key offline goes through the staging: the new director key
waits in ``keys/director.pem.new`` until signed targets list it beside the old one; the install
that brings such targets switches the server to it and stages the removal of the old key.

Signed targets expire (``targets_ttl_s``). With the key online the server re-signs them itself
(:meth:`~ota_server.trust.repository.Repository.refresh_if_needed`); offline,
:func:`stage_refresh` stages version N+1 with no change, so the usual signing renews the expiry,
and :func:`targets_expiry` says how long is left and what to do.

Knows no releases or database: the caller (:mod:`ota_server.cli_trust`) marks releases signed and bumps
the fleet generation through ``bump_generation``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer  # type: ignore[attr-defined]
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Targets  # type: ignore[attr-defined]
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from models.fsio import write_atomic
from ota_server.config import ServerConfig
from ota_server.errors import NothingStaged, RepositoryError
from ota_server.trust import repository as _repository
from ota_server.trust.keys import (
    director_public_json,
    generate_key,
    load_private,
    tuf_public,
    tuf_signer,
)
from ota_server.trust.repository import OFFLINE_TARGETS_HINT, TARGETS_WARN_S, Repository, _signed_root

__all__ = [
    "TARGETS_WARN_DAYS",
    "export_staged",
    "import_signed",
    "rotate_offline_targets",
    "sign_file",
    "sign_staged",
    "stage_director_rotation",
    "stage_refresh",
    "staged_status",
    "targets_expiry",
]

TARGETS_WARN_DAYS = TARGETS_WARN_S / 86400  # days before the signed targets expire that `targets status` warns

_SERIALIZER = JSONSerializer(compact=True)


def _release_of(info: Any) -> int | None:
    release = ((info.custom or {}).get("edgefleet") or {}).get("release")
    return release if isinstance(release, int) else None


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def targets_expiry(
    repo: Repository, *, warn_days: float = TARGETS_WARN_DAYS, now: datetime | None = None
) -> dict[str, Any]:
    """When the signed targets expire, and a warning when that is within ``warn_days`` (or past);
    ``now`` defaults to the repository's clock.

    Offline, the warning names the steps that renew them (``stage-refresh`` unless something is
    staged already, then a signing); online it says the server re-signs them itself.

    Raises:
        RepositoryError: the repository cannot be read.
    """
    expires = repo.targets().signed.expires
    left_s = (expires - (now or _repository._now())).total_seconds()
    out: dict[str, Any] = {"expires": _iso(expires), "expires_in_days": round(left_s / 86400, 2), "warning": None}
    if left_s > warn_days * 86400:
        return out
    when = f"EXPIRED at {out['expires']}" if left_s <= 0 else f"expire in {left_s / 86400:.1f} days ({out['expires']})"
    if not repo.offline_targets:
        out["warning"] = (
            f"the signed TUF targets {when}; the targets key is online, so the server re-signs them at the next "
            "fetch of timestamp.json once half their lifetime is gone: nothing to do but keep it serving"
        )
        return out
    data = repo.config.data_dir
    sign = OFFLINE_TARGETS_HINT.replace("DIR", str(data))
    steps = (
        f"sign the staging ({sign}); signing renews the expiry"
        if repo.staged_path.exists()
        else f"run `ota-server targets stage-refresh --data-dir {data}`, then sign it ({sign})"
    )
    expired = " devices refuse every update until then;" if left_s <= 0 else ""
    out["warning"] = f"the signed TUF targets {when}:{expired} {steps}"
    return out


def staged_status(config: ServerConfig, *, warn_days: float = TARGETS_WARN_DAYS) -> dict[str, Any]:
    """Where the targets stand: offline or not, the signed version and its expiry, what is staged.

    Raises:
        RepositoryError: the repository cannot be read.
    """
    repo = Repository(config)
    signed = repo.targets()
    staged = repo.staged()
    expiry = targets_expiry(repo, warn_days=warn_days)
    out: dict[str, Any] = {
        "offline_targets": repo.offline_targets,
        "targets_keyids": list(repo.root().signed.roles["targets"].keyids),
        "signed_version": signed.signed.version,
        "signed_expires": expiry["expires"],
        "signed_expires_in_days": expiry["expires_in_days"],
        "expiry_warning": expiry["warning"],
        "staged_version": None,
        "stale": False,
        "changes": [],
        "director_rotation_pending": (config.keys_dir / "director.pem.new").exists(),
    }
    if staged is None:
        return out
    out["staged_version"] = staged.signed.version
    out["stale"] = staged.signed.version != signed.signed.version + 1
    out["changes"] = _changes(signed, staged)
    return out


def _changes(signed: Metadata[Targets], staged: Metadata[Targets]) -> list[dict[str, Any]]:
    """What the staging adds, changes or removes against the signed targets (empty: a refresh)."""
    changes = []
    old, new = signed.signed.targets, staged.signed.targets
    for path in sorted(set(old) | set(new)):
        if path not in new:
            changes.append({"path": path, "change": "removed", "release": _release_of(old[path])})
        elif path not in old or old[path].to_dict() != new[path].to_dict():
            change = "added" if path not in old else "changed"
            changes.append({"path": path, "change": change, "release": _release_of(new[path])})
    return changes


def stage_refresh(config: ServerConfig) -> dict[str, Any]:
    """Stage the signed targets unchanged as version N+1, so signing them renews their expiry.

    When changes are staged already, nothing is written: signing them renews the expiry too.
    Returns the staged version and whether this call staged it.

    Raises:
        RepositoryError: the targets key is online (the server re-signs the targets itself), the
            staging is stale, or the repository cannot be read or written.
    """
    repo = Repository(config)
    if not repo.offline_targets:
        raise RepositoryError(
            "the targets key is online (keys/targets.pem): the server re-signs the targets itself once half "
            "their lifetime is gone; there is nothing to stage"
        )
    with repo.locked():
        staged = repo.staged()
        if staged is not None:
            repo.check_staged(staged)
            return {"version": staged.signed.version, "staged": False, "changes": len(_changes(repo.targets(), staged))}
        targets = repo.targets()
        targets.signed.version += 1
        repo.write_staged(targets)
    return {"version": targets.signed.version, "staged": True, "changes": 0}


def _staged_or_raise(repo: Repository) -> Metadata[Targets]:
    staged = repo.staged()
    if staged is None:
        raise NothingStaged(
            f"nothing is staged: the signed targets (version {repo.targets().signed.version}) are current"
        )
    repo.check_staged(staged)
    return staged


def _signers(repo: Repository, key_paths: Sequence[Path]) -> list[Signer]:
    """Signers of ``key_paths``, each checked to be a targets key root lists.

    Raises:
        SetupError: a key file cannot be loaded. RepositoryError: root does not list a key.
    """
    listed = repo.root().signed.roles["targets"].keyids
    signers: list[Signer] = []
    for path in key_paths:
        signer = tuf_signer(load_private(path))
        if signer.public_key.keyid not in listed:
            raise RepositoryError(
                f"{path} is not this repository's targets key: root lists {listed}, the file holds "
                f"{signer.public_key.keyid}"
            )
        signers.append(signer)
    return signers


def sign_staged(
    config: ServerConfig, *, targets_keys: Sequence[Path], bump_generation: Callable[[], None]
) -> dict[str, Any]:
    """Sign the staged targets with the plugged-in offline key and install them.

    Returns the installed version and what the install did to a pending director rotation.

    Raises:
        NothingStaged: nothing is staged. SetupError: a key file cannot be loaded.
            RepositoryError: the key is not root's targets key, the staging is stale, or the
            repository cannot be written.
    """
    repo = Repository(config)
    with repo.locked():
        staged = _staged_or_raise(repo)
        repo._targets_signers = _signers(repo, targets_keys)
        try:
            version = staged.signed.version
            staged.signed.version -= 1  # _bump_targets takes it to the staged version again
            repo._bump_targets(staged, [])
        finally:
            repo._targets_signers = None
        repo.staged_path.unlink()
        director = _advance_director(repo, bump_generation)
    return {"version": version, "director": director}


def export_staged(config: ServerConfig, out: Path) -> dict[str, Any]:
    """Write the staged targets (with a fresh expiry) to ``out`` for an air-gapped signing.

    Raises:
        NothingStaged: nothing is staged. RepositoryError: the staging is stale, or ``out``
            exists or cannot be written.
    """
    if out.exists():
        raise RepositoryError(f"{out} exists; refusing to overwrite it")
    repo = Repository(config)
    with repo.locked():
        staged = _staged_or_raise(repo)
        repo.write_staged(staged)  # the expiry counts from now; the export is the staging, byte for byte
        data = repo.staged_path.read_bytes()
    try:
        write_atomic(out, data)
    except OSError as e:
        raise RepositoryError(f"cannot write {out}: {e}") from e
    return {"version": staged.signed.version, "out": str(out), "targets": len(staged.signed.targets)}


def _read_targets(path: Path) -> Metadata[Targets]:
    """Targets metadata from ``path``.

    Raises:
        RepositoryError: it cannot be read, is not TUF metadata, or not of the targets role.
    """
    try:
        md = Metadata.from_bytes(path.read_bytes())
    except OSError as e:
        raise RepositoryError(f"cannot read {path}: {e}") from e
    except DeserializationError as e:
        raise RepositoryError(f"{path} is not valid TUF metadata (altered?): {e}") from e
    if not isinstance(md.signed, Targets):
        raise RepositoryError(f"{path} holds {md.signed.type} metadata, expected targets")
    return md


def sign_file(path: Path, *, targets_keys: Sequence[Path], out: Path) -> dict[str, Any]:
    """Sign exported targets with the offline key(s), on a machine without the data directory.

    Raises:
        SetupError: a key file cannot be loaded. RepositoryError: ``path`` is not targets
            metadata, or ``out`` exists or cannot be written.
    """
    if out.exists():
        raise RepositoryError(f"{out} exists; refusing to overwrite it")
    md = _read_targets(path)
    md.signatures.clear()
    keyids = []
    for key_path in targets_keys:
        signer = tuf_signer(load_private(key_path))
        md.sign(signer, append=True)
        keyids.append(signer.public_key.keyid)
    try:
        write_atomic(out, md.to_bytes(_SERIALIZER))
    except OSError as e:
        raise RepositoryError(f"cannot write {out}: {e}") from e
    return {"version": md.signed.version, "out": str(out), "keyids": keyids}


def import_signed(config: ServerConfig, path: Path, *, bump_generation: Callable[[], None]) -> dict[str, Any]:
    """Install targets signed air-gapped: they must sign exactly the staged targets, under root's key.

    Raises:
        NothingStaged: nothing is staged. RepositoryError: the file is not the staging (altered,
            or the staging changed since the export), its signature does not verify under root's
            targets key, or the staging is stale.
    """
    md = _read_targets(path)
    repo = Repository(config)
    with repo.locked():
        staged = _staged_or_raise(repo)
        if md.signed.version != staged.signed.version:
            raise RepositoryError(
                f"{path} is targets version {md.signed.version}, the staging is version {staged.signed.version}: "
                "export the staging again (ota-server targets export) and sign that"
            )
        if md.signed_bytes != staged.signed_bytes:
            raise RepositoryError(
                f"{path} does not sign the staged targets: it was altered, or the staging changed since it "
                "was exported (a publish staged more); export again and sign that"
            )
        try:
            repo.root().verify_delegate("targets", md)
        except UnsignedMetadataError as e:
            raise RepositoryError(f"{path} is not signed by the targets key root lists: {e}") from e
        repo.install_targets(md)
        repo.staged_path.unlink()
        director = _advance_director(repo, bump_generation)
    return {"version": md.signed.version, "director": director}


def _advance_director(repo: Repository, bump_generation: Callable[[], None]) -> str | None:
    """Switch to a pending director key once signed targets list it beside the old one, then
    stage the removal of the old key (caller holds the lock). What it did, or None."""
    pending = repo.config.keys_dir / "director.pem.new"
    if not pending.exists():
        return None
    new = director_public_json(load_private(pending).public_key())
    listed = repo.director_keys()
    if new["keyid"] not in {k.get("keyid") for k in listed}:
        return "the new director key is not signed yet"
    os.replace(pending, repo.config.keys_dir / "director.pem")  # every worker signs with it from now
    bump_generation()
    prov = repo.config.provisioning_dir / "director.pub.json"
    write_atomic(prov, json.dumps(new, indent=2).encode() + b"\n")
    if len(listed) == 1:
        return f"switched to director key {new['keyid'][:12]}"
    repo.add_targets([repo.director_target([new])])
    return f"switched to director key {new['keyid'][:12]}; the removal of the old key is staged"


def stage_director_rotation(config: ServerConfig) -> dict[str, Any]:
    """Begin a director rotation with the targets key offline: stage targets listing the new
    and the old key; the server switches once they are signed (see the module docstring).

    Raises:
        RepositoryError: a director rotation is pending already, or the repository cannot be
            written. SetupError: the director key cannot be read.
    """
    repo = Repository(config)
    pending = config.keys_dir / "director.pem.new"
    with repo.locked():
        if pending.exists():
            raise RepositoryError(
                f"a director rotation awaits the offline targets signature already ({OFFLINE_TARGETS_HINT})"
            )
        old = director_public_json(load_private(config.keys_dir / "director.pem").public_key())
        new = director_public_json(generate_key(pending).public_key())
        try:
            repo.add_targets([repo.director_target([new, old])])
        except BaseException:
            pending.unlink(missing_ok=True)
            raise
    return {"role": "director", "old_keyid": old["keyid"], "new_keyid": new["keyid"], "pending": True}


def rotate_offline_targets(
    config: ServerConfig, *, root_key_path: Path, old_key_path: Path, new_key_out: Path
) -> dict[str, Any]:
    """Replace the offline targets key: the new key is written to ``new_key_out`` (0600).

    Root version N+1, signed by the root key, lists the new key instead of the old; the signed
    targets are re-signed as version+1 with both keys, so devices verify them under root N and
    N+1 alike. Refused while changes are staged: sign them first.

    Raises:
        SetupError: a key file cannot be loaded. RepositoryError: ``new_key_out`` exists, the
            old key is not root's targets key, the root key is not root's, changes are staged,
            or the repository cannot be written.
    """
    if new_key_out.exists():
        raise RepositoryError(f"{new_key_out} exists; refusing to overwrite a key")
    repo = Repository(config)
    with repo.locked():
        if repo.staged() is not None:
            raise RepositoryError(f"targets changes are staged; sign them first ({OFFLINE_TARGETS_HINT})")
        (old_signer,) = _signers(repo, [old_key_path])
        root = repo.root()
        new_key = generate_key(new_key_out)
        new_public = tuf_public(new_key)
        root.signed.revoke_key(old_signer.public_key.keyid, "targets")
        root.signed.add_key(new_public, "targets")
        try:
            root = _signed_root(root, root_key_path, None)
            repo._targets_signers = [tuf_signer(new_key), old_signer]
            try:
                repo._bump_targets(repo.targets(), [])
            finally:
                repo._targets_signers = None
        except BaseException:
            new_key_out.unlink(missing_ok=True)
            raise
        write_atomic(config.metadata_dir / f"{root.signed.version}.root.json", root.to_bytes(_SERIALIZER))
    return {
        "role": "targets",
        "old_keyid": old_signer.public_key.keyid,
        "new_keyid": new_public.keyid,
        "root_version": root.signed.version,
        "new_key": str(new_key_out),
    }
