"""``server.json`` in the data directory: the settings ``init`` chose (database URL, expiries),
read back by ``serve`` so both agree without repeating flags. Holds no secrets."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from typing import Any

from ota_server.config import ServerConfig
from ota_server.errors import SetupError

__all__ = ["PERSISTED", "load_settings", "save_settings"]

PERSISTED = (
    "db_url",
    "public_url",
    "max_upload_bytes",
    "assignment_ttl_s",
    "timestamp_ttl_s",
    "snapshot_ttl_s",
    "targets_ttl_s",
    "root_ttl_s",
)


def save_settings(config: ServerConfig) -> None:
    from models.fsio import write_atomic

    data = {name: getattr(config, name) for name in PERSISTED}
    write_atomic(config.settings_file, json.dumps(data, indent=2).encode() + b"\n")


def load_settings(config: ServerConfig, **overrides: Any) -> ServerConfig:
    """``config`` updated from ``server.json``, then from non-None ``overrides``.

    Raises:
        SetupError: the data directory has no ``server.json``, or it cannot be read.
    """
    path = config.settings_file
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise SetupError(
            f"{config.data_dir} has no server.json; run `ota-server init --data-dir {config.data_dir}` first"
        ) from e
    except (OSError, json.JSONDecodeError) as e:
        raise SetupError(f"cannot read {path}: {e}") from e
    known = {f.name for f in fields(ServerConfig)}
    values = {k: v for k, v in data.items() if k in known and k in PERSISTED}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(config, **values)
