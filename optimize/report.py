"""The optimizer's report: a markdown table and JSON beside the bundle's variants.

``report.md`` / ``report.json`` in the bundle directory (extra files the
manifest does not list as variants) say, per variant: size, accuracy, delta
vs FP32, p50/p99 latency and speedup on the build host, and per hardware
class the selection and its reasons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from optimize.select import Decision
from optimize.variants import BuiltVariant

__all__ = ["variant_rows", "report_dict", "markdown_table", "report_markdown"]


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def variant_rows(variants: Sequence[BuiltVariant], baseline: BuiltVariant, *,
                 decisions: Mapping[str, Decision] | None = None) -> list[dict[str, Any]]:
    """One row per variant; ``selected_for`` lists the hardware classes that run it first."""
    ref = baseline.score.value if baseline.score else None
    base_p50 = baseline.latency.p50_ms if baseline.latency else None
    rows = []
    for v in variants:
        acc = v.score.value if v.score else None
        lat = v.latency
        rows.append({
            "variant": v.id, "file": v.path.name, "precision": v.precision.value, "format": v.format.value,
            "size_mb": round(v.path.stat().st_size / 1e6, 3),
            "accuracy": _r(acc, 4), "delta_points": None if acc is None or ref is None else round((acc - ref) * 100, 2),
            "agreement": _r(v.agreement, 4),
            "p50_ms": _r(lat.p50_ms if lat else None), "p95_ms": _r(lat.p95_ms if lat else None),
            "p99_ms": _r(lat.p99_ms if lat else None), "noisy": lat.noisy if lat else None,
            "speedup": None if not lat or not base_p50 else round(base_p50 / lat.p50_ms, 2),
            "selected_for": sorted(hw for hw, d in (decisions or {}).items() if d.order and d.order[0] == v.id),
            "details": v.details,
        })
    return rows


def report_dict(*, name: str, version: str, metric: str, host: str, rows: list[dict[str, Any]],
                decisions: Mapping[str, Decision], parity: Mapping[str, Any], gates: Mapping[str, Any],
                config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "bundle": {"name": name, "version": version}, "metric": metric, "host": host, "parity": dict(parity),
        "variants": rows,
        "selection": {hw: {"order": list(d.order), "reason": d.reason, "rejected": dict(d.rejected)}
                      for hw, d in decisions.items()},
        "gates": dict(gates), "config": dict(config),
    }


def _fmt(x: Any, suffix: str = "") -> str:
    return "—" if x is None else f"{x}{suffix}"


def markdown_table(rows: Sequence[Mapping[str, Any]], metric: str) -> str:
    head = f"| variant | precision | size MB | {metric} | Δ points | p50 ms | p99 ms | speedup | selected for |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        delta = None if r["delta_points"] is None else f"{r['delta_points']:+.2f}"
        lines.append(
            f"| {r['variant']} | {r['precision']} | {r['size_mb']:.2f} | {_fmt(r['accuracy'])} | {_fmt(delta)} "
            f"| {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r['speedup'], 'x')} "
            f"| {', '.join(r.get('selected_for', [])) or '—'} |"
        )
    return "\n".join(lines)


def report_markdown(report: Mapping[str, Any]) -> str:
    b = report["bundle"]
    parts = [
        f"# {b['name']} {b['version']} — optimization report", "",
        f"Measured on: {report['host']}", "",
        markdown_table(report["variants"], report["metric"]), "",
        "Accuracy on the held-out split; latency single-stream, batch 1 (models.bench).", "",
        "## Selection", "",
    ]
    for hw, sel in report["selection"].items():
        parts.append(f"- **{hw}**: {' > '.join(sel['order'])} — {sel['reason']}")
    g = report["gates"]
    parts += ["", "## Gates", "", f"latency budget {g['latency_budget_ms']} ms (p95), min agreement {g['min_agreement']}", ""]
    return "\n".join(parts)
