"""The demo's final report: fleet table, rollout timelines, charts.

Built only from what the server's fleet API and ``edge-agent status --json``
said during and at the end of the run (passed in as plain dicts), and from what
the bundles' manifests say of each release, so the report shows the fleet as an
operator would see it: each vehicle's gate decision with its evidence (frames,
agreement against the expectation, the variant it chose) is the server's copy
of what the vehicle reported. Writes ``report.md``, ``summary.json`` and PNG
charts; prints the same tables to the terminal.
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
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)  # device id -> its gate record here


@dataclass(frozen=True)
class ModelFacts:
    """One release as its bundle describes it."""

    version: str
    source: str  # how it was made: "4 epochs on 3000 images", "1.1.0 with its classes rotated"
    top1: float | None  # FP32 top-1 on the held-out split (None: not measured, e.g. --quick)
    heldout_frames: int | None
    baseline: str | None = None  # the release it replaces ("signs@1.0.0"); None for the first
    expected: float | None = None  # the agreement a vehicle running ``baseline`` should see
    expected_heldout: float | None = None
    expected_calib: float | None = None  # on the frames of the fleet's cameras
    calib_frames: int = 0
    expectation_pair: str | None = None  # "onnx-fp32 vs onnx-fp32"
    floor: float | None = None  # gates.min_agreement


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
    lines = [
        "| device | hardware | profile | model (server) | model (agent) | p95 ms | FPS | agreement | last update |",
        "|---|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.hardware} | {r.profile} | {r.version} | {r.agent_version} | "
            f"{_fmt(r.p95_ms)} | {_fmt(r.fps)} | {_fmt(r.agreement, '.3f')} | {r.state} |"
        )
    return lines


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def models_table(models: Sequence[ModelFacts]) -> list[str]:
    """Markdown table lines of the releases: how each was made, top-1, what it expects to agree."""
    lines = [
        "| release | how it was made | top-1 (held-out) | replaces | expected agreement | "
        "held-out / camera frames | floor |",
        "|---|---|---:|---|---:|---|---:|",
    ]
    for m in models:
        frames = (
            f"{_pct(m.expected_heldout)} on {m.heldout_frames} / {_pct(m.expected_calib)} on "
            f"{m.calib_frames} ({m.expectation_pair})"
            if m.expected is not None
            else "-"
        )
        top1 = f"{_pct(m.top1)} of {m.heldout_frames}" if m.top1 is not None and m.heldout_frames else _pct(m.top1)
        lines.append(
            f"| {m.version} | {m.source} | {top1} | {m.baseline or '-'} | {_pct(m.expected)} | "
            f"{frames} | {_pct(m.floor)} |"
        )
    return lines


def _flips(agreement: Mapping[str, Any], rows: int = 2) -> str:
    flips = [
        f"{c.get('active')}→{c.get('candidate')} ×{c.get('count')}"
        for c in (agreement.get("confusion") or [])[:rows]
        if isinstance(c, Mapping)
    ]
    return ", ".join(flips) or "-"


def gate_rows(rec: RolloutRecord, names: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per vehicle that reported a gate in ``rec``: the decision and its evidence."""
    rows = []
    for device_id, g in sorted(rec.gates.items(), key=lambda kv: names.get(kv[0], kv[0])):
        a = g.get("agreement") if isinstance(g.get("agreement"), Mapping) else {}
        ci = a.get("agreement_ci95") or []
        rows.append(
            {
                "vehicle": names.get(device_id, device_id),
                "variant": g.get("variant"),
                "judged_against": a.get("judged_against"),
                "baseline": a.get("baseline"),
                "decision": a.get("decision"),
                "frames": a.get("frames"),
                "agreement": a.get("agreement"),
                "ci95": list(ci) if len(ci) == 2 else None,
                "expected": a.get("expected"),
                "p0": a.get("p0"),
                "outcome": g.get("outcome") or g.get("state"),
                "reason_code": g.get("reason_code"),
                "flipped": _flips(a),
            }
        )
    return rows


def gate_table(rec: RolloutRecord, names: Mapping[str, str]) -> list[str]:
    """Markdown lines: each vehicle's gate decision for ``rec`` as the server recorded it."""
    lines = [
        "| vehicle | variant chosen | judged against | decision | frames | agreement [95% CI] | "
        "expected → p0 | outcome | most flipped |",
        "|---|---|---|---|---:|---:|---:|---|---|",
    ]
    for r in gate_rows(rec, names):
        ci = f" [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]" if r["ci95"] else ""
        against = f"{r['judged_against']} ({r['baseline']})" if r["judged_against"] else "-"
        outcome = f"{r['outcome'] or '-'}{' ' + r['reason_code'] if r['reason_code'] else ''}"
        expected = "-" if r["expected"] is None else f"{r['expected']:.3f} → {_fmt(r['p0'], '.3f')}"
        lines.append(
            f"| {r['vehicle']} | {r['variant'] or '-'} | {against} | {r['decision'] or '-'} | "
            f"{r['frames'] if r['frames'] is not None else '-'} | {_fmt(r['agreement'], '.3f')}{ci} | "
            f"{expected} | {outcome} | {r['flipped']} |"
        )
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


def rollout_section(rec: RolloutRecord, names: Mapping[str, str]) -> list[str]:
    status = rec.final.get("status", "?")
    reasons = failure_reasons(rec.final)
    lines = [f"### {rec.label} — rollout `{rec.rollout_id}`: **{status}**", ""]
    if rec.final.get("halt_reason"):
        lines += [f"Halt reason: {rec.final['halt_reason']}", ""]
    if reasons:
        lines += [
            "Failure reasons reported by the vehicles: "
            + ", ".join(f"`{k}` × {v}" for k, v in sorted(reasons.items())),
            "",
        ]
    if rec.gates:
        lines += ["Gate decisions (the server's copy of each vehicle's report):", ""]
        lines += gate_table(rec, names) + [""]
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
            ax.annotate(label, (e["t"], 0), rotation=90, fontsize=6, va="bottom", ha="right", color="dimgrey")
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


def write_report(
    out: Path,
    *,
    rows: Sequence[FleetRow],
    rollouts: Sequence[RolloutRecord],
    checks: Sequence[tuple[str, bool, str]],
    timings: Mapping[str, float],
    models: Sequence[ModelFacts],
    extra: Mapping[str, Any],
) -> str:
    """Write report.md, summary.json and the charts; returns the markdown text."""
    charts = write_charts(out, rollouts, rows)
    names = {r.device_id: r.name for r in rows}
    lines = ["# edgefleet demo report", ""]
    lines += [
        "## Releases",
        "",
        "top-1: the FP32 variant on the held-out split, measured by `edge-optimize`; expected agreement: "
        "how often the release should agree with the one it replaces (the lower of the held-out and the "
        "camera-frame figure), which the vehicles' shadow gates test against; floor: the bundle's "
        "`min_agreement`, under which no expectation goes.",
        "",
    ]
    lines += models_table(models) + [""]
    lines += [
        "## Fleet",
        "",
        "p95 / FPS / agreement: the vehicle's last benchmark report (the update gates' measurements); "
        "model (server): what the fleet API says it runs; model (agent): `edge-agent status --json`.",
        "",
    ]
    lines += fleet_table(rows) + [""]
    lines += ["## Rollouts", ""]
    for rec in rollouts:
        lines += rollout_section(rec, names)
    lines += ["## Checks", "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {name} | {'PASS' if ok else 'FAIL'} | {detail} |" for name, ok, detail in checks]
    lines += ["", "## Step timings", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    lines += ["", "## Charts", ""] + [f"![{p.stem}]({p.name})" for p in charts] + [""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    summary = {
        "fleet": [r.__dict__ for r in rows],
        "rollouts": [
            {
                "label": r.label,
                "version": r.version,
                "rollout_id": r.rollout_id,
                "expected": r.expected,
                "status": r.final.get("status"),
                "events": r.events,
                "failure_reasons": failure_reasons(r.final),
                "gates": gate_rows(r, names),
                "final": r.final,
            }
            for r in rollouts
        ],
        "models": [m.__dict__ for m in models],
        "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks],
        "timings_s": dict(timings),
        "charts": [p.name for p in charts],
        **extra,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return text
