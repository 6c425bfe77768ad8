"""The optimizer's report: a markdown table and JSON beside the bundle's variants.

``report.md`` / ``report.json`` in the bundle directory (extra files the
manifest does not list as variants) say, per variant: size, accuracy, delta
vs FP32, wall p50/p99 and thread-CPU p50 on the build host (timed
interleaved, one thread), and its CPU-time speedup over FP32 with the
confidence interval that decided; per hardware class the selection, its
reasons and the speedup verdicts (CPU time, which decided, and wall time, for
the record); and the agreement expectations against each baseline (with their per-class
breakdown), and a warning for each expectation below the gates' floor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from models.bundle import AgreementExpectation
from models.stats import SpeedupVerdict
from optimize.select import Decision
from optimize.variants import BuiltVariant

__all__ = [
    "variant_rows",
    "report_dict",
    "markdown_table",
    "report_markdown",
    "interval_text",
    "selection_lines",
    "expectation_table",
]


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _verdicts(decisions: Mapping[str, Decision], metric: str) -> dict[str, SpeedupVerdict]:
    out: dict[str, SpeedupVerdict] = {}
    for d in decisions.values():
        for v in d.evidence if metric == "cpu" else d.wall:
            out.setdefault(v.candidate, v)
    return out


def variant_rows(
    variants: Sequence[BuiltVariant], baseline: BuiltVariant, *, decisions: Mapping[str, Decision] | None = None
) -> list[dict[str, Any]]:
    """One row per variant; ``selected_for`` lists the hardware classes that run it first."""
    ref = baseline.score.value if baseline.score else None
    cpu, wall = _verdicts(decisions or {}, "cpu"), _verdicts(decisions or {}, "wall")
    rows = []
    for v in variants:
        acc = v.score.value if v.score else None
        lat = v.latency
        cpu_stats = v.timing.cpu if v.timing else None
        rows.append(
            {
                "variant": v.id,
                "file": v.path.name,
                "precision": v.precision.value,
                "format": v.format.value,
                "input_form": v.input_form.value,
                "size_mb": round(v.path.stat().st_size / 1e6, 3),
                "accuracy": _r(acc, 4),
                "delta_points": None if acc is None or ref is None else round((acc - ref) * 100, 2),
                "agreement": _r(v.agreement, 4),
                "p50_ms": _r(lat.p50_ms if lat else None),
                "p95_ms": _r(lat.p95_ms if lat else None),
                "p99_ms": _r(lat.p99_ms if lat else None),
                "noisy": lat.noisy if lat else None,
                "cpu_p50_ms": _r(cpu_stats.p50_ms if cpu_stats else None),
                "cpu_p99_ms": _r(cpu_stats.p99_ms if cpu_stats else None),
                "queries": lat.n if lat else None,
                "speedup": (
                    1.0 if v.id == baseline.id and lat else cpu[v.id].interval.to_dict() if v.id in cpu else None
                ),
                "wall_speedup": wall[v.id].interval.to_dict() if v.id in wall else None,
                "selected_for": sorted(hw for hw, d in (decisions or {}).items() if d.order and d.order[0] == v.id),
                "details": v.details,
            }
        )
    return rows


def report_dict(
    *,
    name: str,
    version: str,
    metric: str,
    host: str,
    rows: list[dict[str, Any]],
    decisions: Mapping[str, Decision],
    parity: Mapping[str, Any],
    gates: Mapping[str, Any],
    config: Mapping[str, Any],
    expectations: Sequence[AgreementExpectation] = (),
    calib: Mapping[str, Any] | None = None,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "bundle": {"name": name, "version": version},
        "metric": metric,
        "host": host,
        "parity": dict(parity),
        "variants": rows,
        "selection": {
            hw: {
                "order": list(d.order),
                "reason": d.reason,
                "rejected": dict(d.rejected),
                "min_speedup": d.min_speedup,
                "evidence": [v.to_dict() for v in d.evidence],
                "wall": [v.to_dict() for v in d.wall],
            }
            for hw, d in decisions.items()
        },
        "expectations": [{**dataclasses.asdict(e), "expected": e.expected} for e in expectations],
        "calibration": dict(calib or {}),
        "warnings": list(warnings),
        "gates": dict(gates),
        "config": dict(config),
    }


def _fmt(x: Any, suffix: str = "") -> str:
    return "—" if x is None else f"{x}{suffix}"


def interval_text(i: Mapping[str, Any] | float | None) -> str:
    """``"1.12x [1.08, 1.15]"`` (``"1.0x"`` for the baseline, ``"—"`` when not timed)."""
    if i is None:
        return "—"
    if not isinstance(i, Mapping):
        return f"{i}x"
    return f"{i['point']:.2f}x [{i['low']:.2f}, {i['high']:.2f}]"


def markdown_table(rows: Sequence[Mapping[str, Any]], metric: str) -> str:
    head = (
        f"| variant | precision | size MB | {metric} | Δ points | p50 ms | p99 ms | cpu p50 ms "
        "| cpu speedup [95% CI] | selected for |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        delta = None if r["delta_points"] is None else f"{r['delta_points']:+.2f}"
        lines.append(
            f"| {r['variant']} | {r['precision']} | {r['size_mb']:.2f} | {_fmt(r['accuracy'])} | {_fmt(delta)} "
            f"| {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r.get('cpu_p50_ms'))} "
            f"| {interval_text(r['speedup'])} | {', '.join(r.get('selected_for', [])) or '—'} |"
        )
    return "\n".join(lines)


def selection_lines(selection: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per class: the order, then each speedup verdict with its interval and decision."""
    lines = []
    for hw, s in selection.items():
        lines.append(f"{hw:14s} {' > '.join(s['order'])}")
        for v in s.get("evidence", []):
            i = v["speedup"]
            verdict = "preferred" if v["preferred"] else "not preferred"
            lines.append(
                f"{'':14s}   {v['candidate']}: cpu {i['point']:.2f}x [{i['low']:.2f}, {i['high']:.2f}] "
                f"over {v['baseline']} ({v['queries']} queries), needs >= {v['min_speedup']:g}x: {verdict}"
            )
    return lines


def expectation_table(expectations: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| variant | baseline | baseline variant | held-out | frames | calibration | frames | expected "
        "| classes | lowest class |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in expectations:
        classes = e.get("per_class") or []
        low = min(classes, key=lambda c: c["agreement"], default=None)
        lowest = "—" if low is None else f"{low['label']} {low['agreement']:.4f} ({low['frames']} frames)"
        lines.append(
            f"| {e['variant']} | {e['baseline']} | {e['baseline_variant']} | {e['heldout']:.4f} "
            f"| {e['heldout_frames']} | {'—' if e['calib'] is None else format(e['calib'], '.4f')} "
            f"| {e['calib_frames']} | {e['expected']:.4f} | {len(classes)} | {lowest} |"
        )
    return "\n".join(lines)


def report_markdown(report: Mapping[str, Any]) -> str:
    b = report["bundle"]
    parts = [
        f"# {b['name']} {b['version']} — optimization report",
        "",
        f"Measured on: {report['host']}",
        "",
        *[f"**Warning:** {w}\n" for w in report.get("warnings", [])],
        markdown_table(report["variants"], report["metric"]),
        "",
        "Accuracy on the held-out split. Latency single-stream, batch 1, every variant timed interleaved "
        "in one process on one thread (models.bench.measure_interleaved): p50/p99 are wall time; the "
        "speedup is the ratio of median thread CPU times with its 95 % paired-bootstrap interval, and "
        "decides the selection.",
        "",
        "## Selection",
        "",
    ]
    for hw, sel in report["selection"].items():
        parts.append(f"- **{hw}**: {' > '.join(sel['order'])} — {sel['reason']}")
        for v in sel.get("wall", []):
            parts.append(f"  - wall time, for the record: {v['candidate']} {interval_text(v['speedup'])}")
    parts += ["", "## Agreement expectations", ""]
    if report.get("expectations"):
        parts += [
            expectation_table(report["expectations"]),
            "",
            "Mean per-frame agreement (models.agreement) of each variant with each baseline variant, "
            "on the held-out split and on the calibration frames; a device expects the lower of the two. "
            "Classes: how many classes of the baseline carry their own figure (a device tests each), "
            "and the lowest of them.",
            "",
        ]
    else:
        parts += ["none", ""]
    cal = report.get("calibration") or {}
    if cal:
        parts += [f"Calibration frames: {cal.get('frames')} from {cal.get('source')}.", ""]
    g = report["gates"]
    parts += [
        "## Gates",
        "",
        f"latency budget {g['latency_budget_ms']} ms (p95), agreement floor {g['min_agreement']}, "
        f"tolerance {g['agreement_tolerance']}, false refusal rate {g['false_refusal_rate']}, "
        f"false acceptance rate {g['false_acceptance_rate']}",
        "",
    ]
    return "\n".join(parts)
