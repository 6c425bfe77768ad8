"""Content-addressed artifact store: ``artifacts/sha256/ab/abcdef...``, written temp-then-rename.

A file lands under its final name only complete and with the right digest, so a crash never
leaves a truncated artifact where a good one is expected. This module does not decide what an
artifact is for; releases and TUF targets point at it.
"""

from __future__ import annotations

import os
from pathlib import Path

from models.bundle import sha256_file
from ota_server.errors import RepositoryError

__all__ = ["ArtifactStore"]


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def put(self, source: Path, sha256: str) -> tuple[Path, bool]:
        """Move ``source`` (same filesystem) into the store; returns (path, newly created).

        The digest is checked again here so nothing unverified ever gets a content address.

        Raises:
            RepositoryError: ``source`` does not have the digest ``sha256``.
        """
        actual = sha256_file(source)
        if actual != sha256:
            raise RepositoryError(f"{source.name} has sha256 {actual}, expected {sha256}")
        dest = self.path_for(sha256)
        if dest.exists():
            source.unlink(missing_ok=True)
            return dest, False
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(source, 0o644)
        os.replace(source, dest)
        return dest, True
