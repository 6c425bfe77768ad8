"""The file steps of an update: ``downloading``, ``verifying`` and ``staging``.

:class:`UpdateFiles` fetches the manifest and every variant file of an
:class:`~edge_agent.update.core.Update` into ``<downloads>/<sha256>.part``
(resuming, capped at the assigned length: :mod:`edge_agent.trust.download`;
a transfer that arrives corrupted is fetched afresh, up to ``INTEGRITY_ATTEMPTS``
downloads, before it refuses the update), verifies their lengths and hashes and the manifest's claims against the
assignment and this device's hardware, and stages them into the inactive slot
(:class:`~edge_agent.update.slots.Slots`): the assigned variant and each
alternate this device can run.

This module does not verify the assignment (:mod:`edge_agent.update.intake`)
nor judge a model (:mod:`edge_agent.update.gate`).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import urllib3

from edge_agent.config import AgentConfig
from edge_agent.errors import FatalError, ReasonCode, StopRequested
from edge_agent.trust.assignment import SHA256_HEX, TargetRef
from edge_agent.trust.download import DownloadPolicy, fetch, verify_file
from edge_agent.trust.tuf_client import target_url
from edge_agent.update.core import Update
from edge_agent.update.slots import Slots
from models.bundle import BundleError, Gates, Manifest, load_manifest
from models.hardware import HardwareProfile, can_run

__all__ = ["INTEGRITY_ATTEMPTS", "UpdateFiles", "files_of"]

log = logging.getLogger(__name__)
_R = ReasonCode
INTEGRITY_ATTEMPTS = 3  # downloads of one file before a corrupted one refuses the update
_CORRUPTED = frozenset({_R.HASH_MISMATCH, _R.LENGTH_EXCEEDED})  # what a fresh download may cure


def files_of(update: Update) -> tuple[TargetRef, ...]:
    """Every file an update downloads: the manifest, the assigned variant, each alternate."""
    return (update.manifest, *(vt.target for vt in update.variant_targets()))


class UpdateFiles:
    """Download, verify and stage the files of an update; read its downloaded manifest."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        targets_url: str,
        pool: urllib3.PoolManager,
        slots: Slots,
        profile: Callable[[], HardwareProfile],
        pause: Callable[[str], None],
        stop: threading.Event | None = None,
    ) -> None:
        self.config, self.targets_url, self.pool, self.slots = config, targets_url, pool, slots
        self._profile = profile
        self._pause = pause  # the test hook: called with "download-<bytes>" once the configured bytes are in
        self.stop = stop

    def part(self, sha256: str) -> Path:
        """Where the file with this sha256 is downloaded to (``<downloads>/<sha256>.part``).

        Raises FatalError(TARGET_MISMATCH) unless ``sha256`` is 64 lowercase hex digits: it never
        becomes a path otherwise (a journal edited by hand, an assignment checked elsewhere).
        """
        if not SHA256_HEX.fullmatch(sha256):
            raise FatalError(_R.TARGET_MISMATCH, f"sha256 {sha256[:80]!r} is not 64 lowercase hex digits")
        return self.config.paths.downloads / f"{sha256}.part"

    def download(self, update: Update) -> None:
        """Fetch every file of ``update`` (resuming), each checked as it arrives.

        Raises TransientError, StopRequested, FatalError (HASH_MISMATCH, LENGTH_EXCEEDED only after
        ``INTEGRITY_ATTEMPTS`` corrupted downloads of one file; NO_SPACE; TARGET_MISMATCH for a bad sha256).
        """
        c = self.config
        policy = DownloadPolicy(
            chunk_bytes=c.chunk_bytes,
            min_rate_bps=c.min_rate_bps,
            rate_window_s=c.rate_window_s,
            timeout_s=c.http_timeout_s,
            free_space_margin_bytes=c.free_space_margin_bytes,
        )
        for ref in files_of(update):
            self._fetch_intact(ref, policy)

    def _fetch_intact(self, ref: TargetRef, policy: DownloadPolicy) -> None:
        """Fetch one file and check its length and sha256; a corrupted transfer (``HASH_MISMATCH``,
        ``LENGTH_EXCEEDED``) is deleted and fetched afresh, up to :data:`INTEGRITY_ATTEMPTS` downloads
        in all, before it refuses the update (reported once, by the state machine)."""
        url = target_url(self.targets_url, ref.path, ref.sha256)
        part = self.part(ref.sha256)
        for attempt in range(1, INTEGRITY_ATTEMPTS + 1):
            bar = _progress_bar(ref.path, ref.length)
            try:
                fetch(self.pool, url, part, length=ref.length, policy=policy, on_progress=self._download_hook(bar))
                verify_file(part, length=ref.length, sha256=ref.sha256)
                return
            except FatalError as e:
                if e.reason not in _CORRUPTED:
                    raise
                part.unlink(missing_ok=True)
                if attempt == INTEGRITY_ATTEMPTS:
                    raise FatalError(e.reason, f"{e.detail} ({attempt} downloads)", claimed=e.claimed) from e
                log.warning("%s (download %d of %d); fetching it afresh", e, attempt, INTEGRITY_ATTEMPTS)
            finally:
                if bar is not None:
                    bar.close()

    def _download_hook(self, bar: Any) -> Any:
        limit = self.config.pause.download_bytes
        stop = self.stop
        if limit is None and bar is None and stop is None:
            return None

        def hook(total: int) -> None:
            if stop is not None and stop.is_set():
                # the .part file stays: the next start resumes the download where it stopped
                raise StopRequested(f"stop requested during the download, at byte {total}")
            if bar is not None:
                bar.update(total - bar.n)
            if limit is not None and total >= limit:
                self._pause(f"download-{total}")

        return hook

    def verify(self, update: Update) -> None:
        """Length and sha256 of every downloaded file, then the manifest's claims: its name and version,
        each variant's file being the assigned target, the assigned variant running on this hardware.

        Raises FatalError (a file that fails its hash is deleted, so it is downloaded afresh).
        """
        for ref in files_of(update):
            part = self.part(ref.sha256)
            try:
                verify_file(part, length=ref.length, sha256=ref.sha256)
            except FatalError:
                part.unlink(missing_ok=True)
                raise
        manifest = self.manifest(update)
        if (manifest.name, manifest.version) != (update.name, update.version):
            raise FatalError(
                _R.TARGET_MISMATCH, f"manifest is {manifest.name}@{manifest.version}, assigned {update.label}"
            )
        for vt in update.variant_targets():
            try:
                variant = manifest.variant(vt.variant)
            except BundleError as e:
                raise FatalError(_R.BUNDLE_INVALID, str(e)) from e
            if (variant.sha256, variant.size) != (vt.target.sha256, vt.target.length):
                raise FatalError(_R.TARGET_MISMATCH, f"manifest variant {variant.id} is not the assigned target file")
        ok, why = can_run(manifest.variant(update.variant), self._profile())
        if not ok:
            raise FatalError(_R.INCOMPATIBLE_HARDWARE, f"variant {update.variant}: {why}")

    def manifest(self, update: Update) -> Manifest:
        """The downloaded manifest of ``update``. Raises FatalError(BUNDLE_INVALID)."""
        try:
            return load_manifest(self.part(update.manifest.sha256).read_bytes())
        except BundleError as e:
            raise FatalError(_R.BUNDLE_INVALID, f"manifest of {update.label}: {e}") from e

    def gates(self, update: Update) -> Gates:
        """The bundle's gates, tightened by the rollout's overrides (a looser one is ignored: the
        director key alone must not switch a gate off). Raises FatalError(BUNDLE_INVALID)."""
        try:
            return self.manifest(update).gates.tightened_by(update.gates)
        except BundleError as e:
            raise FatalError(_R.BUNDLE_INVALID, f"gates of {update.label}: {e}") from e

    def stageable(self, update: Update, manifest: Manifest) -> list[str]:
        """The assigned variant, then each alternate this device can run (the device has the last word)."""
        ids = [update.variant]
        for alt in update.alternates:
            ok, why = can_run(manifest.variant(alt.variant), self._profile())
            if ok:
                ids.append(alt.variant)
            else:
                log.info("alternate %s of %s is left out: %s", alt.variant, update.label, why)
        return ids

    def stage(self, update: Update) -> Update:
        """Stage the verified files into the inactive slot; returns ``update`` with that ``slot``.

        Raises FatalError(BUNDLE_INVALID) when they do not form a valid bundle.
        """
        manifest = self.manifest(update)
        slot = self.slots.inactive_slot()
        ids = self.stageable(update, manifest)
        targets = {vt.variant: vt.target for vt in update.variant_targets()}
        files = {"bundle.json": self.part(update.manifest.sha256)}
        files.update({manifest.variant(vid).file: self.part(targets[vid].sha256) for vid in ids})
        self.slots.stage(slot, files, variant_id=update.variant, alternates=ids[1:])
        return replace(update, slot=slot)


def _progress_bar(path: str, length: int) -> Any:
    """A tqdm bar for a download when someone watches a terminal (None otherwise, or without tqdm)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=length, unit="B", unit_scale=True, desc=path.rsplit("/", 1)[-1], leave=False)
