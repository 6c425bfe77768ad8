"""Watching a rollout from outside: :class:`RolloutWatcher` records when it changes status or
stage, :func:`stage_metrics` turns that timeline into per-stage figures.

Used by the fleet simulator and the rollout benchmark. It observes only — through
``GET /api/v1/rollouts/<id>`` — and decides nothing: the server stages, advances and halts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ota_server.client.api import OtaClient
from ota_server.client.errors import ClientError
from ota_server.client.schema import TERMINAL_STATUSES

__all__ = ["RolloutWatcher", "format_stage_table", "stage_metrics"]


class RolloutWatcher(threading.Thread):
    """Polls one rollout and records every change of status or stage with its time.

    ``client`` carries a viewer token. Give it a client of its own: behind a pool that the
    simulated devices keep busy, it would see each change only after waiting for a connection.
    ``probe`` (the simulator's counters) is sampled with every recorded change, so
    :func:`stage_metrics` can tell what the fleet did during each stage.
    """

    def __init__(
        self,
        client: OtaClient,
        rollout_id: str,
        *,
        interval_s: float = 0.5,
        probe: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        super().__init__(daemon=True, name=f"watch-{rollout_id}")
        self.client, self.rollout_id, self.interval_s = client, rollout_id, interval_s
        self.probe = probe
        self.timeline: list[dict[str, Any]] = []
        self.final: dict[str, Any] = {"id": rollout_id, "ended": False}
        self.finished = threading.Event()
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the watcher was created (right after the rollout, by its callers)."""
        return time.monotonic() - self._t0

    def run(self) -> None:
        last: tuple[str, int] | None = None
        while not self._halt.is_set():
            try:
                r = self.client.rollout(self.rollout_id)
            except ClientError as e:
                self.timeline.append({"t": round(self.elapsed(), 2), "event": f"watch error: {e}"})
                self._halt.wait(self.interval_s)
                continue
            now = (r["status"], r["stage"])
            if now != last:
                entry: dict[str, Any] = {
                    "t": round(self.elapsed(), 2),
                    "event": f"status={now[0]} stage={now[1]}",
                    "status": now[0],
                    "stage": now[1],
                }
                if self.probe is not None:
                    entry["counts"] = dict(self.probe())
                self.timeline.append(entry)
                last = now
            self.final = {**r, "ended": now[0] in TERMINAL_STATUSES}
            if now[0] in TERMINAL_STATUSES:
                self.finished.set()
                return
            self._halt.wait(self.interval_s)

    def close(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def stage_metrics(
    timeline: Sequence[Mapping[str, Any]], rollout: Mapping[str, Any], end: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Per stage of ``rollout``: its devices (cumulative cohort), when it became the current stage,
    how long the rollout stayed there (``advance_s``: until it advanced, completed or halted) and
    the polls and reports per second the simulator made meanwhile.

    ``timeline`` is a :class:`RolloutWatcher`'s, with counters; ``end`` (``t`` and ``counts``)
    closes a stage the rollout was still in when the watch ended. A stage the rollout passed
    between two observations has no times (``entered_s`` None).
    """
    marks = [e for e in timeline if "counts" in e and "stage" in e]
    progress = {p.get("stage"): p for p in rollout.get("progress") or []}
    rows: list[dict[str, Any]] = []
    for k, pct in enumerate(rollout.get("stages") or []):
        first = next((i for i, e in enumerate(marks) if e["stage"] == k and e["status"] not in TERMINAL_STATUSES), None)
        row: dict[str, Any] = {
            "stage": k,
            "percent": pct,
            "devices": progress.get(k, {}).get("devices"),
            "succeeded": progress.get(k, {}).get("succeeded"),
            "entered_s": None,
            "advance_s": None,
            "left_as": None,
            "polls_per_s": None,
            "reports_per_s": None,
        }
        if first is not None:
            enter = marks[first]
            leave = next((e for e in marks[first + 1 :] if e["stage"] != k or e["status"] in TERMINAL_STATUSES), None)
            stop = leave or end
            span = max(float(stop["t"]) - float(enter["t"]), 1e-9)
            row.update(
                entered_s=enter["t"],
                advance_s=round(span, 1),
                left_as=("advanced" if leave["stage"] != k else leave["status"]) if leave else None,
                polls_per_s=round((stop["counts"].get("polls", 0) - enter["counts"].get("polls", 0)) / span, 1),
                reports_per_s=round((stop["counts"].get("reports", 0) - enter["counts"].get("reports", 0)) / span, 1),
            )
        rows.append(row)
    return rows


def format_stage_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """:func:`stage_metrics` as a text table; ``-`` where a stage was never observed."""
    cols = (
        ("stage", 5, "d"),
        ("percent", 7, "g"),
        ("devices", 7, "d"),
        ("advance_s", 17, ".1f"),
        ("polls_per_s", 7, ".1f"),
        ("reports_per_s", 9, ".1f"),
        ("left_as", 9, ""),
    )
    titles = ("stage", "percent", "devices", "time to advance s", "polls/s", "reports/s", "then")
    lines = ["  ".join(f"{t:>{w}}" for t, (_, w, _) in zip(titles, cols, strict=True))]
    for r in rows:
        cells = []
        for name, width, spec in cols:
            value = r.get(name)
            cells.append(f"{'-' if value is None else format(value, spec):>{width}}")
        lines.append("  ".join(cells))
    return "\n".join(lines)
