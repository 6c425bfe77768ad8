"""A/B model slots on disk.

``slots/a`` and ``slots/b`` each hold one complete, verified bundle
directory; ``slots/current`` is a symlink to the active one, switched
atomically (new symlink under a temp name, ``os.replace``, fsync). A slot is
filled through ``slots/.staging-<x>`` and renamed into place only when
complete, so a crash never leaves a half-written slot; the other slot keeps
the previous model for rollback.

A slot holds ``bundle.json`` and every variant file the device may serve (the
assigned variant and its alternates); ``.variant`` records the one it serves:
the assigned variant when staged, then the child-process gate's choice
(:func:`edge_agent.perception.runtimes.record_variant`; the perception path
reads it back with :func:`~edge_agent.perception.runtimes.variant_in`, the one
answer to "which variant is in this slot").

This module does not verify signatures or hashes of downloads (see
:mod:`edge_agent.trust.download`), nor build the TensorRT engines of "build on
device" variants (see :mod:`edge_agent.perception.engines`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from edge_agent.errors import FatalError, ReasonCode
from edge_agent.perception.runtimes import record_variant
from edge_agent.update.journal import fsync_dir
from models.bundle import BundleError, Manifest, read_bundle, verify_bundle

__all__ = ["SLOT_NAMES", "Slots"]

log = logging.getLogger(__name__)
SLOT_NAMES = ("a", "b")


class Slots:
    """The two slots under ``root`` and the ``current`` symlink."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.current_link = root / "current"

    def path(self, slot: str) -> Path:
        if slot not in SLOT_NAMES:
            raise ValueError(f"slot must be one of {SLOT_NAMES}, got {slot!r}")
        return self.root / slot

    def active_slot(self) -> str | None:
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        return target if target in SLOT_NAMES else None

    def active_dir(self) -> Path | None:
        slot = self.active_slot()
        return self.path(slot) if slot else None

    def inactive_slot(self) -> str:
        return "b" if self.active_slot() == "a" else "a"

    @staticmethod
    def other(slot: str) -> str:
        return "b" if slot == "a" else "a"

    def manifest(self, slot: str | None) -> Manifest | None:
        """The manifest of a slot's bundle (files not re-hashed), or None when empty/invalid."""
        if slot is None or not (self.path(slot) / "bundle.json").is_file():
            return None
        try:
            return read_bundle(self.path(slot), verify=False)
        except BundleError:
            return None

    def clean(self) -> None:
        """Remove what a crash may have left: staging dirs and temp symlinks."""
        if not self.root.exists():
            return
        for leftover in self.root.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.root.glob(".current-*"):
            leftover.unlink(missing_ok=True)

    def stage(self, slot: str, files: dict[str, Path], *, variant_id: str, alternates: Sequence[str] = ()) -> Path:
        """Fill ``slot`` with ``files`` (name → source), verified, then rename it into place.

        ``variant_id`` is the assigned variant, recorded as the one the slot serves until the
        gate chooses; ``alternates`` the other variants staged beside it. The active slot is
        never touched. Raises FatalError(BUNDLE_INVALID) when the files do not form a valid
        bundle holding every one of those variants.
        """
        if slot == self.active_slot():
            raise ValueError(f"refusing to stage into the active slot {slot!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{slot}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name, src in files.items():
            _link_or_copy(src, staging / name)
        try:
            manifest = read_bundle(staging, verify=False)
            verify_bundle(staging, manifest, variant_ids=[variant_id, *alternates])
            record_variant(staging, variant_id)
        except (BundleError, ValueError) as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise FatalError(ReasonCode.BUNDLE_INVALID, f"staged bundle is invalid: {e}") from e
        fsync_dir(staging)
        final = self.path(slot)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        fsync_dir(self.root)
        return final

    def choose(self, slot: str, variant_id: str) -> None:
        """Record the gate's choice of variant for a staged slot (atomic; see :func:`record_variant`)."""
        if slot == self.active_slot():
            raise ValueError(f"refusing to change the variant of the active slot {slot!r}")
        record_variant(self.path(slot), variant_id)

    def switch(self, slot: str) -> None:
        """Point ``current`` at ``slot`` atomically (no-op when it already does)."""
        if self.active_slot() == slot:
            return
        if not (self.path(slot) / "bundle.json").is_file():
            raise ValueError(f"slot {slot!r} holds no bundle")
        tmp = self.root / f".current-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(slot, tmp)
        os.replace(tmp, self.current_link)
        fsync_dir(self.root)
        log.info("current → slots/%s", slot)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    with open(dst, "rb") as fh:
        os.fsync(fh.fileno())
