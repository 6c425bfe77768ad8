"""TUF image-repository client: python-tuf's ``ngclient.Updater``, bootstrapped from the pinned root.

Each check builds a fresh :class:`tuf.ngclient.Updater` (one refresh per
instance, as ngclient requires) over the agent's metadata cache, bootstrapped
from the root pinned at enrollment; newer roots, timestamp, snapshot and
targets are verified by ngclient and cached, so a replay of older metadata
(rollback) or an expired timestamp (freeze) is refused against the cache.

python-tuf errors are mapped to report reason codes here; this module does
not download targets (see :mod:`edge_agent.trust.download`).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_exc
from tuf.ngclient.updater import Updater
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from edge_agent.errors import FatalError, ReasonCode, TransientError, UpdateError

__all__ = ["TufTarget", "TufClient", "target_url"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TufTarget:
    """A target as the verified TUF targets metadata describes it."""

    path: str
    length: int
    hashes: Mapping[str, str]
    custom: Mapping[str, Any]


def target_url(targets_url: str, path: str, sha256: str) -> str:
    """Consistent-snapshot URL of a target: ``<base>/<dir>/<sha256>.<file>``."""
    directory, name = posixpath.split(path)
    rel = posixpath.join(directory, f"{sha256}.{name}") if directory else f"{sha256}.{name}"
    return targets_url.rstrip("/") + "/" + rel


def _map_error(e: Exception) -> UpdateError:
    R = ReasonCode
    if isinstance(e, tuf_exc.ExpiredMetadataError):
        return FatalError(R.TUF_EXPIRED, f"TUF metadata expired (freeze attack or stale repository): {e}")
    if isinstance(e, tuf_exc.BadVersionNumberError):
        return FatalError(R.TUF_ROLLBACK, f"TUF metadata older than the cached version (rollback): {e}")
    if isinstance(e, tuf_exc.RepositoryError):
        return FatalError(R.TUF_METADATA_INVALID, f"TUF metadata did not verify: {e}")
    if isinstance(e, tuf_exc.SlowRetrievalError):
        return TransientError(R.SLOW_RETRIEVAL, f"TUF metadata download too slow: {e}")
    if isinstance(e, tuf_exc.DownloadLengthMismatchError):
        return FatalError(R.TUF_METADATA_INVALID, f"TUF metadata longer than allowed: {e}")
    return TransientError(R.DOWNLOAD_FAILED, f"TUF metadata download failed: {e}")


class TufClient:
    """Refresh the image repository's metadata and look up targets."""

    def __init__(
        self,
        *,
        metadata_dir: Path,
        metadata_url: str,
        targets_url: str,
        pinned_root: bytes,
        timeout_s: float = 10.0,
    ) -> None:
        self.metadata_dir = metadata_dir
        self.metadata_url = metadata_url
        self.targets_url = targets_url
        self.pinned_root = pinned_root
        self.timeout_s = timeout_s

    def _updater(self) -> Updater:
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        return Updater(
            str(self.metadata_dir),
            self.metadata_url,
            target_base_url=self.targets_url,
            fetcher=Urllib3Fetcher(socket_timeout=max(1, int(self.timeout_s))),
            bootstrap=self.pinned_root,
        )

    def lookup(self, paths: list[str]) -> dict[str, TufTarget | None]:
        """Refresh the metadata, then the TUF view of each path (None = not a target).

        Raises FatalError (TUF_EXPIRED, TUF_ROLLBACK, TUF_METADATA_INVALID) or
        TransientError (the repository could not be reached).
        """
        try:
            updater = self._updater()
            updater.refresh()
            found: dict[str, TufTarget | None] = {}
            for path in paths:
                info = updater.get_targetinfo(path)
                found[path] = (
                    None
                    if info is None
                    else TufTarget(
                        path=info.path, length=info.length, hashes=dict(info.hashes), custom=dict(info.custom or {})
                    )
                )
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as e:
            raise _map_error(e) from e
        except OSError as e:
            raise TransientError(ReasonCode.DOWNLOAD_FAILED, f"TUF metadata cache I/O failed: {e}") from e
        except ValueError as e:  # malformed metadata that ngclient rejects while parsing
            raise FatalError(ReasonCode.TUF_METADATA_INVALID, f"TUF metadata is malformed: {e}") from e
        log.debug("TUF refreshed: %s", {p: t is not None for p, t in found.items()})
        return found
