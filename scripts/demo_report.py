"""The demo's final report: fleet table, rollout timelines, charts.

Built only from what the server's fleet API and ``edge-agent status --json``
said at the end of the run (passed in as plain dicts), so the report shows the
fleet as an operator would see it. Writes ``report.md``, ``summary.json`` and
PNG charts; prints the same tables to the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RolloutRecord:
    """One rollout as the demo drove it: what it was for, and what happened when."""

    label: str  # "initial 1.0.0", "staged 1.1.0", "bad 1.2.0"
    version: str
    rollout_id: str
    expected: str  # "completed" | "halted"
    events: list[dict[str, Any]] = field(default_factory=list)  # {"t": s, "event": str}
    progress: list[dict[str, Any]] = field(default_factory=list)  # {"t", "success", "failure"}
    final: dict[str, Any] = field(default_factory=dict)  # GET /api/v1/rollouts/<id> at the end


@dataclass
class FleetRow:
    name: str
    device_id: str
    hardware: str
    profile: str
    version: str
    state: str  # last update's outcome (with the reason code of a refusal)
    p95_ms: float | None
    fps: float | None
    agreement: float | None
    agent_version: str  # what `edge-agent status --json` says is active


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def fleet_table(rows: Sequence[FleetRow]) -> list[str]:
    """Markdown table lines of the fleet."""
    lines = ["| device | hardware | profile | model (server) | model (agent) | p95 ms | FPS | agreement | last update |",
             "|---|---|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.hardware} | {r.profile} | {r.version} | {r.agent_version} | "
                     f"{_fmt(r.p95_ms)} | {_fmt(r.fps)} | {_fmt(r.agreement, '.3f')} | {r.state} |")
    return lines


def failure_reasons(final: Mapping[str, Any]) -> dict[str, int]:
    """Reason code → count from a rollout's detail (whatever shape the server nests it in)."""
    for key in ("failure_reasons", "reasons"):
        value = final.get(key)
        if isinstance(value, Mapping):
            return {str(k): int(v) for k, v in value.items()}
    counts: dict[str, int] = {}
    for stage in final.get("stages_progress", final.get("progress", [])) or []:
        if isinstance(stage, Mapping):
            for k, v in (stage.get("failure_reasons") or {}).items():
                counts[str(k)] = counts.get(str(k), 0) + int(v)
    return counts


def rollout_section(rec: RolloutRecord) -> list[str]:
    status = rec.final.get("status", "?")
    reasons = failure_reasons(rec.final)
    lines = [f"### {rec.label} — rollout `{rec.rollout_id}`: **{status}**", ""]
    if rec.final.get("halt_reason"):
        lines += [f"Halt reason: {rec.final['halt_reason']}", ""]
    if reasons:
        lines += ["Failure reasons reported by the vehicles: "
                  + ", ".join(f"`{k}` × {v}" for k, v in sorted(reasons.items())), ""]
    lines += ["| t (s) | event |", "|---:|---|"]
    lines += [f"| {e['t']:.1f} | {e['event']} |" for e in rec.events]
    return lines + [""]


def write_charts(out: Path, rollouts: Sequence[RolloutRecord], rows: Sequence[FleetRow]) -> list[Path]:
    """Rollout progress over time and per-device latency/FPS; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    fig, axes = plt.subplots(1, max(1, len(rollouts)), figsize=(5 * max(1, len(rollouts)), 3.6), squeeze=False)
    for ax, rec in zip(axes[0], rollouts, strict=False):
        ts = [p["t"] for p in rec.progress]
        ax.step(ts, [p["success"] for p in rec.progress], where="post", label="committed", color="tab:green")
        ax.step(ts, [p["failure"] for p in rec.progress], where="post", label="failed/refused", color="tab:red")
        for e in rec.events:
            ax.axvline(e["t"], color="grey", linestyle=":", linewidth=0.8)
            label = e.get("kind") or e["event"]
            if label == "stage-advanced":
                label = e["event"].split(" — ")[-1]
            ax.annotate(label, (e["t"], 0), rotation=90, fontsize=6,
                        va="bottom", ha="right", color="dimgrey")
        ax.set_title(f"{rec.label} ({rec.final.get('status', '?')})", fontsize=9)
        ax.set_xlabel("seconds since the demo started")
        ax.set_ylabel("devices")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    paths.append(out / "rollouts.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [r.name for r in rows]
    ax1.bar(names, [r.p95_ms or 0.0 for r in rows], color="tab:blue")
    ax1.set_ylabel("p95 latency (ms)")
    ax1.set_title("last benchmark p95 per vehicle", fontsize=9)
    ax2.bar(names, [r.fps or 0.0 for r in rows], color="tab:orange")
    ax2.set_ylabel("inferences per second")
    ax2.set_title("last benchmark throughput per vehicle", fontsize=9)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.tight_layout()
    paths.append(out / "fleet.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_report(out: Path, *, rows: Sequence[FleetRow], rollouts: Sequence[RolloutRecord],
                 checks: Sequence[tuple[str, bool, str]], timings: Mapping[str, float],
                 extra: Mapping[str, Any]) -> str:
    """Write report.md, summary.json and the charts; returns the markdown text."""
    charts = write_charts(out, rollouts, rows)
    lines = ["# edgefleet demo report", ""]
    lines += ["## Fleet", "",
              "p95 / FPS / agreement: the vehicle's last benchmark report (the update gates' measurements); "
              "model (server): what the fleet API says it runs; model (agent): `edge-agent status --json`.", ""]
    lines += fleet_table(rows) + [""]
    lines += ["## Rollouts", ""]
    for rec in rollouts:
        lines += rollout_section(rec)
    lines += ["## Checks", "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {name} | {'PASS' if ok else 'FAIL'} | {detail} |" for name, ok, detail in checks]
    lines += ["", "## Step timings", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    lines += ["", "## Charts", ""] + [f"![{p.stem}]({p.name})" for p in charts] + [""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    summary = {
        "fleet": [r.__dict__ for r in rows],
        "rollouts": [{"label": r.label, "version": r.version, "rollout_id": r.rollout_id,
                      "expected": r.expected, "status": r.final.get("status"), "events": r.events,
                      "failure_reasons": failure_reasons(r.final), "final": r.final} for r in rollouts],
        "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks],
        "timings_s": dict(timings),
        "charts": [p.name for p in charts],
        **extra,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return text
