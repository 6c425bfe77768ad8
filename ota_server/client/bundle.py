"""A bundle directory as ``POST /api/v1/releases`` takes it: an uncompressed tar of
``bundle.json`` and the variant files it names, with top-level names.

``edge-optimize`` writes ``report.md`` and ``report.json`` beside the bundle; the server
refuses files its manifest does not name, so they are left out (and named to the caller).
This module reads the manifest only for its file names: it validates nothing (the server does).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import IO

from ota_server.client.errors import NotABundle

__all__ = ["bundle_files", "make_tar"]

MANIFEST = "bundle.json"


def bundle_files(bundle_dir: Path) -> tuple[list[Path], list[str]]:
    """The files to upload — ``bundle.json`` and the variant files it names — and the names of
    the other entries of the directory, left out. Raises :class:`NotABundle` without a readable
    ``bundle.json``."""
    manifest = bundle_dir / MANIFEST
    if not manifest.is_file():
        raise NotABundle(f"{bundle_dir} has no {MANIFEST}; is it a bundle directory?")
    try:
        data = json.loads(manifest.read_bytes())
        named = {str(v["file"]) for v in data["variants"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NotABundle(f"{manifest} is not a readable bundle manifest: {e}") from e
    keep = {MANIFEST} | named
    present = sorted(p for p in bundle_dir.iterdir() if p.is_file())
    files = [p for p in present if p.name in keep]
    extra = sorted(p.name for p in bundle_dir.iterdir() if p.name not in keep)
    return files, extra


def make_tar(bundle_dir: Path, dest: IO[bytes]) -> list[str]:
    """Write the bundle's tar (PAX format) to ``dest``; returns the names left out.
    Raises :class:`NotABundle` (see :func:`bundle_files`) and ``OSError``."""
    files, extra = bundle_files(bundle_dir)
    with tarfile.open(fileobj=dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in files:
            tar.add(p, arcname=p.name, recursive=False)
    return extra
