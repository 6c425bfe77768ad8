"""Crash-safe file writes shared by every stage.

One implementation of "write a file so that a reader (or a restart after
``kill -9`` or a power cut) sees either the old content or the new, never a
torn mix": write a temp file beside the target, fsync it, ``os.replace`` it
over the target, then fsync the directory so the rename itself is durable.

Temp files are named ``.<target name>.<random>`` so a caller can find and
remove the leftovers of a writer killed mid-write.

Standard library only. This module does not lock: callers that race on one
path serialize themselves.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["fsync_dir", "write_atomic"]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or create inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | Callable[[BinaryIO], object],
    *,
    mode: int = 0o644,
    durable: bool = True,
) -> None:
    """Replace ``path`` with ``data`` (bytes, or a function writing to a binary file) atomically.

    Missing parent directories are created. The temp file is created with ``mode`` before a byte is written, so a
    0600 secret is never readable by others, not even for a moment. With
    ``durable`` the file and its directory are fsynced. Raises ``OSError``;
    on any failure the temp file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, (bytes, bytearray, memoryview)):
                fh.write(data)
            else:
                data(fh)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent)
