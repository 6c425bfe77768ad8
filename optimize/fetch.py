"""Fetch a published release through the OTA server's TUF image repository (``--baseline-release``).

The optimizer trusts what the fleet trusts: the image repository's root
(``--trusted-root``, the ``root.json`` from ``ota-server init``'s provisioning
directory). A stock :class:`tuf.ngclient.Updater` refreshes the metadata from
that root, then downloads ``<name>/<version>/bundle.json`` and the variant
files asked for; ngclient checks each file's length and hashes against the
signed targets metadata before it is written. On top of that the target's
custom fields must name this bundle, version and variant, and every variant
file must match the manifest's length and sha256 (no mix-and-match between
releases).

Target paths and custom fields: docs/contracts.md §7. Every failure raises
:class:`~optimize.errors.InputError` naming the release and what went wrong.
This module does not judge whether the release fits the new bundle (see
:mod:`optimize.baseline`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from models.bundle import (
    MANIFEST_NAME,
    BundleError,
    Manifest,
    Variant,
    load_manifest,
    verify_bundle,
)
from optimize.config import parse_release
from optimize.errors import InputError

__all__ = ["fetch_release"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def _updater(server: str, trusted_root: Path, cache: Path, dest: Path) -> Any:
    from tuf.ngclient.updater import Updater

    try:
        root = trusted_root.read_bytes()
    except OSError as e:
        raise InputError(f"--trusted-root {trusted_root} cannot be read: {e}") from e
    cache.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    base = server.rstrip("/")
    from tuf.api import exceptions as tuf_exc

    try:
        return Updater(
            str(cache),
            f"{base}/tuf/metadata/",
            target_dir=str(dest),
            target_base_url=f"{base}/tuf/targets/",
            bootstrap=root,
        )
    except (ValueError, TypeError, tuf_exc.RepositoryError) as e:  # not a (valid) TUF root
        raise InputError(f"--trusted-root {trusted_root} is not a valid TUF root metadata file: {e}") from e


def _custom(info: Any) -> dict[str, Any]:
    custom = (info.custom or {}).get("edgefleet")
    return dict(custom) if isinstance(custom, dict) else {}


def _check_custom(info: Any, *, name: str, version: str, kind: str, variant: str | None) -> None:
    got = _custom(info)
    want = {"bundle": name, "version": version, "kind": kind, "variant": variant}
    wrong = {k: got.get(k) for k, v in want.items() if got.get(k) != v}
    if wrong:
        raise InputError(f"TUF target {info.path}: custom fields {wrong} do not match {want}")


def _download(updater: Any, path: str, dest: Path, check: Callable[[Any], None]) -> Path:
    info = updater.get_targetinfo(path)
    if info is None:
        raise InputError(f"{path} is not a target of the server's TUF repository (is the release published?)")
    check(info)
    target = dest / path.rsplit("/", 1)[-1]
    updater.download_target(info, filepath=str(target))
    return target


def _run_tuf(what: str, server: str, fn: Callable[[], T]) -> T:
    from tuf.api import exceptions as tuf_exc

    try:
        return fn()
    except (tuf_exc.RepositoryError, ValueError) as e:
        raise InputError(f"{what}: the TUF metadata of {server} did not verify against --trusted-root: {e}") from e
    except tuf_exc.DownloadError as e:
        cause = e.__cause__ or e.__context__
        detail = str(e) or (f"{type(cause).__name__}: {cause}" if cause else type(e).__name__)
        raise InputError(f"{what}: downloading from {server} failed: {detail}") from e
    except OSError as e:
        raise InputError(f"{what}: {e}") from e


def _variant_download(updater: Any, name: str, version: str, v: Variant, dest: Path) -> Callable[[], Path]:
    def check(info: Any) -> None:
        _check_custom(info, name=name, version=version, kind="variant", variant=v.id)
        if info.length != v.size or info.hashes.get("sha256") != v.sha256:
            raise InputError(
                f"TUF target {info.path} (length {info.length}, sha256 "
                f"{info.hashes.get('sha256')}) does not match the manifest's {v.file} "
                f"(length {v.size}, sha256 {v.sha256})"
            )

    return lambda: _download(updater, f"{name}/{version}/{v.file}", dest, check)


def fetch_release(
    release: str, *, server: str, trusted_root: Path, dest: Path, variant_ids: Callable[[Manifest], Sequence[str]]
) -> Path:
    """Download and verify ``release`` ("name@version") into ``dest``: its manifest and the
    files of the variants ``variant_ids(manifest)`` names. Returns ``dest``, a bundle directory
    holding those files. Raises :class:`InputError`."""
    name, version = parse_release(release)
    what = f"--baseline-release {release}"
    updater = _updater(server, trusted_root, dest / ".tuf-metadata", dest)
    _run_tuf(what, server, updater.refresh)
    mpath = _run_tuf(
        what,
        server,
        lambda: _download(
            updater,
            f"{name}/{version}/{MANIFEST_NAME}",
            dest,
            lambda i: _check_custom(i, name=name, version=version, kind="manifest", variant=None),
        ),
    )
    try:
        manifest = load_manifest(mpath.read_bytes())
    except BundleError as e:
        raise InputError(f"{what}: the published bundle.json is not a valid manifest: {e}") from e
    if (manifest.name, manifest.version) != (name, version):
        raise InputError(f"{what}: the published manifest is {manifest.release}")
    wanted = list(dict.fromkeys(variant_ids(manifest)))
    for vid in wanted:
        _run_tuf(what, server, _variant_download(updater, name, version, manifest.variant(vid), dest))
    try:
        verify_bundle(dest, manifest, variant_ids=wanted)
    except BundleError as e:
        raise InputError(f"{what}: downloaded files do not match the manifest: {e}") from e
    log.info("fetched %s from %s through TUF: %s", release, server, wanted)
    return dest
