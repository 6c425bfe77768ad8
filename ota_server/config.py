"""Server configuration: one dataclass built once (CLI flags or ``create_app`` mapping).

The data directory layout is derived from ``data_dir``; nothing here touches the disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ota_server.errors import SetupError

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
    testing: bool = False

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
