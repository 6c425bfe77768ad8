"""Crash-safe files: atomic JSON writes, the update journal and the agent state.

Every write goes to a temp file in the same directory, is fsynced, renamed
over the target with ``os.replace`` and the directory is fsynced, so after a
``kill -9`` or a power cut a reader sees the old file or the new one, never a
torn one. This module does not decide anything (see :mod:`edge_agent.update.core`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_agent.errors import JournalError
from edge_agent.update.core import Record
from models.fsio import fsync_dir, write_atomic

__all__ = ["write_atomic", "remove_stale_temps", "fsync_dir", "read_json", "Journal", "AgentState", "StateFile"]


def remove_stale_temps(path: Path) -> int:
    """Delete temp files a killed :func:`write_atomic` left beside ``path``; returns how many."""
    stale = list(path.parent.glob(f".{path.name}.*")) if path.parent.exists() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def read_json(path: Path) -> Any:
    """Parse a JSON file; raises :class:`JournalError` naming the file when it is unreadable."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise JournalError(f"cannot read {path}: {e}") from e


class Journal:
    """The update journal (``journal.json``); a missing file means idle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Record:
        if not self.path.exists():
            return Record()
        data = read_json(self.path)
        try:
            return Record.from_dict(data)
        except (KeyError, TypeError, ValueError) as e:
            raise JournalError(f"{self.path} holds an invalid record: {e}") from e

    def save(self, record: Record) -> None:
        try:
            write_atomic(self.path, json.dumps(record.to_dict(), indent=1).encode())
        except OSError as e:
            raise JournalError(f"cannot write {self.path}: {e}") from e


@dataclass(frozen=True)
class AgentState:
    """What the agent remembers between polls besides the journal."""

    nonce: str = ""
    etag: str | None = None  # of a verified assignment: a 304 is taken for it only until ``etag_expires``
    etag_expires: str | None = None  # ISO-8601: when the assignment that ``etag`` names expires
    highest_release: int = 0  # the release counter never goes below this
    settled: dict[str, str] = field(default_factory=dict)  # "<release>:<sha256>" → final state
    refused: str | None = None  # digest of the last refused assignment (report it once)
    last_update: dict[str, Any] | None = (
        None  # {"release", "name", "version", "state", "reason", "detail", "time", "slots"}
    )

    def with_settled(self, key: str, state: str, *, keep: int = 20) -> AgentState:
        settled = dict(self.settled)
        settled[key] = state
        while len(settled) > keep:
            settled.pop(next(iter(settled)))
        return replace(self, settled=settled)


class StateFile:
    """``agent-state.json``: atomic load/save of :class:`AgentState`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> AgentState:
        if not self.path.exists():
            return AgentState()
        data = read_json(self.path)
        try:
            return AgentState(
                nonce=str(data.get("nonce", "")),
                etag=data.get("etag"),
                etag_expires=data.get("etag_expires"),
                highest_release=int(data.get("highest_release", 0)),
                settled={str(k): str(v) for k, v in (data.get("settled") or {}).items()},
                refused=data.get("refused"),
                last_update=data.get("last_update"),
            )
        except (AttributeError, TypeError, ValueError) as e:
            raise JournalError(f"{self.path} is invalid: {e}") from e

    def save(self, state: AgentState) -> None:
        body = {
            "nonce": state.nonce,
            "etag": state.etag,
            "etag_expires": state.etag_expires,
            "highest_release": state.highest_release,
            "settled": state.settled,
            "refused": state.refused,
            "last_update": state.last_update,
        }
        try:
            write_atomic(self.path, json.dumps(body, indent=1).encode(), mode=0o600)
        except OSError as e:
            raise JournalError(f"cannot write {self.path}: {e}") from e
