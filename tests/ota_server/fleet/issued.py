"""The director's issue of a rollout's assignment, for tests that ingest reports in-process.

A report counts in a rollout only when its ``assignment_digest`` names an assignment of that
rollout issued to its device (:mod:`ota_server.fleet.ingest`). Tests that call ``ingest``
without the director record one with :func:`issue` and report :data:`DIGEST`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Connection

from ota_server.storage import store as st

__all__ = ["DIGEST", "issue"]

DIGEST = "a1" * 32


def issue(conn: Connection, rollout: Mapping[str, Any]) -> None:
    """Record the rollout's assignment (:data:`DIGEST`) as issued to every device of its group."""
    for device in st.devices_in_group(conn, rollout["group_name"]):
        st.record_issued(conn, device["id"], rollout["id"], DIGEST)
