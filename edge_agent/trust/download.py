"""Resumable, length-capped target downloads and their verification.

A target is fetched into ``<downloads>/<sha256>.part`` with HTTP Range
requests so an interrupted transfer resumes where it stopped. The transfer
never writes past the target's signed length (an endless-data server is cut
off with ``LENGTH_EXCEEDED``), a throughput watchdog aborts a stalled or
trickling transfer (``SLOW_RETRIEVAL``, transient: the ``.part`` is kept and
resumed later), and free space is checked before the first byte.
:func:`verify_file` checks length and sha256 before anything parses the file.

This module does not know where targets come from (see
:mod:`edge_agent.trust.tuf_client`) nor what they contain.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import urllib3

from edge_agent.errors import FatalError, ReasonCode, TransientError
from models.bundle import sha256_file

__all__ = ["DownloadPolicy", "fetch", "verify_file", "sha256_of"]

log = logging.getLogger(__name__)
_R = ReasonCode


@dataclass(frozen=True)
class DownloadPolicy:
    chunk_bytes: int = 64 * 1024  # largest single read
    min_rate_bps: float = 1024.0  # below this over ``rate_window_s`` the transfer is aborted
    rate_window_s: float = 5.0  # seconds
    timeout_s: float = 10.0  # connect and read-gap timeout
    free_space_margin_bytes: int = 16 * 1024 * 1024  # kept free beyond the target


class _Watchdog:
    """Aborts when fewer than ``min_rate_bps * window`` bytes arrived in the last window."""

    def __init__(self, policy: DownloadPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock
        self.start = clock()
        self.marks: deque[tuple[float, int]] = deque([(self.start, 0)])

    def tick(self, total: int, url: str) -> None:
        now = self.clock()
        self.marks.append((now, total))
        window = self.policy.rate_window_s
        while len(self.marks) > 1 and self.marks[1][0] <= now - window:
            self.marks.popleft()
        t0, b0 = self.marks[0]
        if now - self.start >= window and now - t0 >= window * 0.5:
            rate = (total - b0) / max(now - t0, 1e-9)
            if rate < self.policy.min_rate_bps:
                raise TransientError(
                    _R.SLOW_RETRIEVAL,
                    f"{url}: {rate:.0f} B/s over {now - t0:.1f} s is below {self.policy.min_rate_bps:.0f} B/s",
                )


def _check_space(directory: Path, needed: int, margin: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed + margin:
        raise FatalError(_R.NO_SPACE, f"{needed} bytes needed (+{margin} margin) in {directory}, {free} free")


def _open(pool: urllib3.PoolManager, url: str, start: int, policy: DownloadPolicy) -> urllib3.BaseHTTPResponse:
    headers = {"Range": f"bytes={start}-"} if start else {}
    try:
        return pool.request(
            "GET",
            url,
            headers=headers,
            preload_content=False,
            redirect=False,
            retries=False,
            timeout=urllib3.Timeout(connect=policy.timeout_s, read=policy.timeout_s),
        )
    except urllib3.exceptions.HTTPError as e:
        raise TransientError(_R.DOWNLOAD_FAILED, f"{url}: {e}") from e


def _resume_offset(resp: urllib3.BaseHTTPResponse, start: int, url: str) -> int:
    """Where the response body starts in the file (0 when the server ignored the Range)."""
    if resp.status == 200:
        return 0
    if resp.status == 206:
        content_range = resp.headers.get("Content-Range", "")
        try:
            first = int(content_range.split()[1].split("-")[0])
        except (IndexError, ValueError):
            raise TransientError(_R.DOWNLOAD_FAILED, f"{url}: bad Content-Range {content_range!r}") from None
        if first != start:
            raise TransientError(_R.DOWNLOAD_FAILED, f"{url}: asked for byte {start}, got {first}")
        return start
    raise TransientError(_R.DOWNLOAD_FAILED, f"{url}: HTTP {resp.status}")


def fetch(
    pool: urllib3.PoolManager,
    url: str,
    part: Path,
    *,
    length: int,
    policy: DownloadPolicy,
    on_progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Path:
    """Download ``url`` into ``part`` (resuming) until it holds exactly ``length`` bytes.

    Raises FatalError (LENGTH_EXCEEDED, NO_SPACE) or TransientError
    (SLOW_RETRIEVAL, DOWNLOAD_FAILED; the ``.part`` stays for the next try).
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > length:
        log.warning("%s is longer than the signed length %d; starting over", part, length)
        part.unlink()
        have = 0
    if have == length:
        return part
    _check_space(part.parent, length - have, policy.free_space_margin_bytes)
    resp = _open(pool, url, have, policy)
    try:
        start = _resume_offset(resp, have, url)
        if have:
            log.info("resuming %s at byte %d of %d", url, start, length)
        _stream(resp, part, start, length=length, url=url, policy=policy, on_progress=on_progress, clock=clock)
    except BaseException:
        # never hand a half-read (trickling, endless) connection back to the pool
        resp.close()
        raise
    resp.release_conn()
    return part


def _stream(
    resp: urllib3.BaseHTTPResponse,
    part: Path,
    start: int,
    *,
    length: int,
    url: str,
    policy: DownloadPolicy,
    on_progress: Callable[[int], None] | None,
    clock: Callable[[], float],
) -> None:
    watchdog = _Watchdog(policy, clock)
    total = start
    with open(part, "r+b" if part.exists() else "wb") as fh:
        fh.truncate(start)
        fh.seek(start)
        try:
            while total < length:
                block = resp.read1(min(policy.chunk_bytes, length - total + 1))
                if not block:
                    break
                if total + len(block) > length:
                    fh.truncate(0)
                    raise FatalError(_R.LENGTH_EXCEEDED, f"{url}: server sent more than the signed {length} bytes")
                fh.write(block)
                total += len(block)
                if on_progress is not None:
                    fh.flush()
                    on_progress(total)
                watchdog.tick(total, url)
            if total == length and resp.read1(1):
                fh.truncate(0)
                raise FatalError(_R.LENGTH_EXCEEDED, f"{url}: server sent more than the signed {length} bytes")
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TransientError(_R.DOWNLOAD_FAILED, f"{url}: transfer broke at byte {total}: {e}") from e
        finally:
            fh.flush()
            os.fsync(fh.fileno())
    if total < length:
        raise TransientError(_R.DOWNLOAD_FAILED, f"{url}: connection closed at byte {total} of {length}")


def sha256_of(path: Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (:func:`models.bundle.sha256_file`)."""
    return sha256_file(path, chunk=chunk)


def verify_file(path: Path, *, length: int, sha256: str) -> None:
    """Length, then sha256, against the signed values; raises FatalError before anyone parses it."""
    size = path.stat().st_size
    if size > length:
        raise FatalError(_R.LENGTH_EXCEEDED, f"{path.name} is {size} bytes, the signed length is {length}")
    if size < length:
        raise TransientError(_R.DOWNLOAD_FAILED, f"{path.name} is {size} bytes of {length}: incomplete")
    digest = sha256_of(path)
    if digest != sha256:
        raise FatalError(_R.HASH_MISMATCH, f"{path.name} has sha256 {digest[:16]}…, signed {sha256[:16]}…")
