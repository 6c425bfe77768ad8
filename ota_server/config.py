"""Server configuration: one dataclass built once (CLI flags or ``create_app`` mapping).

The data directory layout is derived from ``data_dir``; nothing here touches the disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ota_server.errors import SetupError
from ota_server.rules.reports import MAX_REPORTS

__all__ = ["ServerConfig"]


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    db_url: str | None = None  # None = SQLite file <data_dir>/server.db
    public_url: str | None = None  # base URL devices use; None = the request's host URL
    max_upload_bytes: int = 512 * 1024 * 1024  # bytes, one bundle tar
    max_json_bytes: int = 2 * 1024 * 1024  # bytes, any JSON body
    assignment_ttl_s: int = 3600  # seconds a signed assignment stays valid
    timestamp_ttl_s: int = 86400  # seconds, TUF timestamp expiry
    snapshot_ttl_s: int = 7 * 86400  # seconds, TUF snapshot expiry
    targets_ttl_s: int = 365 * 86400  # seconds, TUF targets expiry
    root_ttl_s: int = 365 * 86400  # seconds, TUF root expiry
    token_cache_s: float = 30.0  # seconds an API token lookup is cached per worker
    bad_auth_per_minute: int = 120  # failed authentications per client address before 429
    # peers whose X-Forwarded-For names the client (``serve --forwarded-allow-ips``); "": none
    forwarded_allow_ips: str = ""
    # per-device report quota (ota_server.fleet.telemetry): a token bucket of reports and one of
    # request bytes, refilled at the rate up to the burst; past it, 429 with Retry-After
    report_rate_per_s: float = 1.0  # reports per second, sustained
    report_burst: int = 1000  # reports at once (at least a full batch, 500)
    report_bytes_per_s: float = 4096.0  # bytes of report bodies per second, sustained
    report_burst_bytes: int = 4 * 1024 * 1024  # bytes at once (at least max_json_bytes)
    report_retention_days: float = 30.0  # reports older than this are deleted; 0 keeps them all
    testing: bool = False

    def __post_init__(self) -> None:
        """Check the report quota and retention.

        Raises:
            SetupError: a rate that is not positive, a burst smaller than one batch (500 reports,
                ``max_json_bytes``), or a negative retention.
        """
        if not (self.report_rate_per_s > 0 and self.report_bytes_per_s > 0):
            raise SetupError(
                f"report rates must be > 0, got {self.report_rate_per_s} reports/s, {self.report_bytes_per_s} bytes/s"
            )
        if self.report_burst < MAX_REPORTS or self.report_burst_bytes < self.max_json_bytes:
            raise SetupError(
                f"the report burst must hold one batch ({MAX_REPORTS} reports, {self.max_json_bytes} bytes), "
                f"got {self.report_burst} reports, {self.report_burst_bytes} bytes"
            )
        if not self.report_retention_days >= 0:
            raise SetupError(f"report retention must be >= 0 days, got {self.report_retention_days}")

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "server.db"

    @property
    def effective_db_url(self) -> str:
        return self.db_url or f"sqlite:///{self.sqlite_path}"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def tuf_dir(self) -> Path:
        return self.data_dir / "tuf"

    @property
    def metadata_dir(self) -> Path:
        return self.data_dir / "tuf" / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.data_dir / "tuf" / "targets"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def locks_dir(self) -> Path:
        return self.data_dir / "locks"

    @property
    def provisioning_dir(self) -> Path:
        return self.data_dir / "provisioning"

    @property
    def settings_file(self) -> Path:
        return self.data_dir / "server.json"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ServerConfig:
        """Build from a mapping with the field names (``data_dir`` required).

        Raises:
            SetupError: an unknown key, or no ``data_dir``.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SetupError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        if "data_dir" not in data:
            raise SetupError("config needs data_dir")
        values = dict(data)
        values["data_dir"] = Path(values["data_dir"]).resolve()
        return cls(**values)

    def with_overrides(self, **changes: Any) -> ServerConfig:
        return replace(self, **changes)
