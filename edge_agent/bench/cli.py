"""``edge-bench``: benchmark bundles (or bare ONNX files) on this host, model-only and on a camera stream.

::

    edge-bench BUNDLE [MORE ...] [--mode model|pipeline|both] [--source synthetic|FILE|DEVICE|URL]
               [--duration S] [--warmup S] [--batch N] [--out DIR] [--fail-if-p99-over MS]

Several targets are compared in one run: one table, speedups against the
first. Results go to ``--out`` as ``results.json``, ``results.csv``,
``settings.json`` and PNG plots. Exit codes: 0 ok, 1 a ``--fail-if-...``
threshold failed, 2 bad usage or input (unopenable source, bad bundle).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from edge_agent.bench import hostinfo, plots
from edge_agent.bench.benchrun import (
    BenchError,
    BenchSettings,
    Mode,
    RunResult,
    cameras_of,
    first_frame,
    resolve_target,
    run_model,
    run_pipeline,
)
from edge_agent.bench.tegrastats import TegrastatsSampler
from edge_agent.errors import ConfigError
from edge_agent.perception.budget import CpuSplit, apply_opencv_threads, split_cpu
from models.runtime import Backend

__all__ = ["build_parser", "main"]

log = logging.getLogger("edge_agent.bench")

EXIT_OK, EXIT_THRESHOLD, EXIT_USAGE = 0, 1, 2
_BACKENDS = {
    "auto": Backend.AUTO,
    "ort": Backend.ONNXRUNTIME,
    "onnxruntime": Backend.ONNXRUNTIME,
    "tensorrt": Backend.TENSORRT,
}


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,C,H,W like 1,3,224,224, got {text!r}") from None
    if len(dims) != 4 or min(dims) <= 0:
        raise argparse.ArgumentTypeError(f"expected 4 positive dimensions N,C,H,W, got {text!r}")
    return dims[0], dims[1], dims[2], dims[3]


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-bench",
        description="Measure model latency (MLPerf single-stream) and end-to-end camera pipeline FPS "
        "of edgefleet bundles or bare ONNX files on this host; compare several in one run.",
        epilog="Examples:\n"
        "  edge-bench bundles/signs-1.1.0 --mode model --duration 5\n"
        "  edge-bench bundles/signs-1.0.0 bundles/signs-1.1.0#onnx-int8 --source drive.avi\n"
        "  edge-bench model.onnx --input-shape 1,3,224,224 --fail-if-p99-over 40\n"
        "Exit codes: 0 ok, 1 a --fail-if threshold failed, 2 bad usage or input.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "targets",
        nargs="+",
        metavar="MODEL_OR_BUNDLE",
        help="bundle directory (DIR#VARIANT picks a variant) or .onnx file; the first is the baseline",
    )
    p.add_argument(
        "--variant",
        help="variant id for every bundle (default: the manifest's choice for this host)",
    )
    p.add_argument(
        "--backend",
        choices=sorted(_BACKENDS),
        default="auto",
        help="runtime: ort (ONNX Runtime), tensorrt (engine variants), auto by variant format",
    )
    p.add_argument(
        "--providers",
        nargs="+",
        metavar="EP",
        help="ONNX Runtime execution providers in priority order, e.g. CUDAExecutionProvider",
    )
    p.add_argument("--threads", type=_positive(int), help="intra-op threads (default: the runtime's)")
    p.add_argument(
        "--source",
        action="append",
        metavar="[NAME=]SOURCE",
        help="frames: synthetic, a video FILE (looped), a DEVICE index, an rtsp/http URL or a "
        "GStreamer pipeline, optionally named (front=drive.avi); repeat for several cameras, whose "
        "frames the pipeline mode infers in batches (default: synthetic)",
    )
    p.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=5.0,
        help="pipeline mode: how long a batch waits for the other cameras (default 5)",
    )
    p.add_argument(
        "--cpu-budget",
        type=_positive(int),
        help="cores for capture and inference (default: all this process may use); sets the intra-op "
        "threads to budget - min(cameras, budget // 2) unless --threads is given",
    )
    p.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        default="both",
        help="model: runtime only; pipeline: capture+inference on the source; both (default)",
    )
    p.add_argument(
        "--duration",
        type=_positive(float),
        default=10.0,
        help="measured seconds per model and mode",
    )
    p.add_argument("--warmup", type=float, default=2.0, help="discarded warm-up seconds before measuring")
    p.add_argument("--batch", type=_positive(int), default=1, help="batch size of model-only queries")
    p.add_argument(
        "--input-shape",
        type=_shape,
        metavar="N,C,H,W",
        help="input shape of a bare .onnx with dynamic dims",
    )
    p.add_argument(
        "--queue-size",
        type=_positive(int),
        default=8,
        help="pipeline queue between capture and inference",
    )
    p.add_argument(
        "--max-fps",
        type=_positive(float),
        help="cap the capture rate (default: as fast as the source)",
    )
    p.add_argument(
        "--tegrastats-interval",
        type=_positive(int),
        default=500,
        metavar="MS",
        help="tegrastats sampling interval on Jetson (ms)",
    )
    p.add_argument("--out", type=Path, default=Path("bench-out/edge-bench"), help="output directory")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--fail-if-p99-over",
        type=_positive(float),
        metavar="MS",
        help="exit 1 if any model's p99 latency (model mode, else pipeline) exceeds MS",
    )
    p.add_argument(
        "--fail-if-fps-under",
        type=_positive(float),
        metavar="FPS",
        help="exit 1 if any model's pipeline FPS is below FPS",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _settings(args: argparse.Namespace, split: CpuSplit) -> BenchSettings:
    sources = tuple(args.source or ["synthetic"])
    return BenchSettings(
        variant=args.variant,
        backend=_BACKENDS[args.backend],
        providers=tuple(args.providers) if args.providers else None,
        threads=args.threads or split.inference,
        source=sources[0],
        sources=sources,
        batch_timeout_ms=args.batch_timeout_ms,
        mode=Mode(args.mode),
        duration_s=args.duration,
        warmup_s=max(0.0, args.warmup),
        batch=args.batch,
        input_shape=args.input_shape,
        queue_size=args.queue_size,
        max_fps=args.max_fps,
        tegrastats_interval_ms=args.tegrastats_interval,
    )


def _run_all(targets: Sequence[str], settings: BenchSettings, work: Path) -> list[RunResult]:
    resolved = [resolve_target(t, settings=settings, work=work) for t in targets]  # all checked before timing
    frame = first_frame(settings.source) if settings.mode is not Mode.PIPELINE else None
    results = []
    for target in resolved:
        result = RunResult(target)
        if frame is not None:
            log.info("model-only: %s for %.1f s", target.label, settings.duration_s)
            run_model(target, settings, frame, result)
        if settings.mode is not Mode.MODEL:
            with tqdm(
                total=settings.duration_s,
                desc=f"pipeline {target.label}",
                unit="s",
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s",
                leave=False,
            ) as bar:
                run_pipeline(target, settings, result, bar)
        results.append(result)
    return results


def _row(r: RunResult, base: RunResult) -> dict[str, Any]:
    row: dict[str, Any] = {"model": r.target.label, "path": r.target.source_path}
    if r.model is not None:
        m = r.model
        row.update(
            model_p50_ms=m.p50_ms,
            model_p90_ms=m.p90_ms,
            model_p95_ms=m.p95_ms,
            model_p99_ms=m.p99_ms,
            model_mean_ms=m.mean_ms,
            model_cv=m.cv,
            model_noisy=m.noisy,
            model_queries=m.n,
            images_per_s=r.images_per_s,
            speedup_p50=base.model.p50_ms / m.p50_ms if base.model and m.p50_ms > 0 else None,
        )
    if r.pipeline is not None:
        pl = r.pipeline
        row.update(
            pipeline_fps=pl["fps"],
            pipeline_p50_ms=pl["latency"]["p50_ms"],
            pipeline_p99_ms=pl["latency"]["p99_ms"],
            frames_captured=pl["captured"],
            frames_inferred=pl["inferred"],
            frames_dropped=pl["dropped"],
            errors=pl["errors"],
            **{f"{k}_ms": v for k, v in pl["stages_ms"].items()},
            speedup_fps=pl["fps"] / base.pipeline["fps"] if base.pipeline and base.pipeline["fps"] else None,
        )
        if r.images_per_s:
            row["pipeline_vs_model"] = pl["fps"] / r.images_per_s
    row["rss_mb"] = r.memory.get("rss_after_pipeline_mb") or r.memory.get("rss_after_model_mb")
    row["power_mean_mw"] = r.power.get("power_mean_mw")
    return row


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    cols = [
        ("model", "model", "s"),
        ("p50 ms", "model_p50_ms", ".2f"),
        ("p99 ms", "model_p99_ms", ".2f"),
        ("img/s", "images_per_s", ".1f"),
        ("x p50", "speedup_p50", ".2f"),
        ("pipe fps", "pipeline_fps", ".1f"),
        ("x fps", "speedup_fps", ".2f"),
        ("e2e p99", "pipeline_p99_ms", ".1f"),
        ("dropped", "frames_dropped", ".0f"),
        ("infer ms", "infer_ms", ".2f"),
        ("pre ms", "preprocess_ms", ".2f"),
        ("decode ms", "decode_ms", ".2f"),
        ("RSS MB", "rss_mb", ".0f"),
        ("mW", "power_mean_mw", ".0f"),
    ]
    cols = [c for c in cols if any(r.get(c[1]) is not None for r in rows)]
    cells = [[_fmt(r.get(key), spec) for _, key, spec in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _, _) in enumerate(cols)]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, ((h, _, _), w) in enumerate(zip(cols, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for c in cells:
        lines.append(
            "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths, strict=True)))
        )
    return "\n".join(lines)


def format_cameras(results: Sequence[RunResult]) -> str:
    """Per camera of each model's pipeline run, then the batched whole."""
    lines = [f"{'model':<24} {'camera':<12} {'fps':>7} {'p50 ms':>8} {'p99 ms':>8} {'captured':>8} {'dropped':>7}"]
    for r in results:
        if r.pipeline is None:
            continue
        parts = [*r.pipeline.get("cameras", {}).items(), (f"all (batch {r.pipeline.get('batch_size')})", r.pipeline)]
        for name, pl in parts:
            lat = pl["latency"]
            lines.append(
                f"{r.target.label:<24} {name:<12} {pl['fps']:>7.1f} {lat['p50_ms']:>8.1f} {lat['p99_ms']:>8.1f} "
                f"{pl['captured']:>8.0f} {pl['dropped']:>7.0f}"
            )
    return "\n".join(lines)


def _write_outputs(
    out: Path,
    settings: BenchSettings,
    results: list[RunResult],
    rows: list[dict[str, Any]],
    host: dict[str, Any],
    *,
    with_plots: bool,
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    settings_d = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(settings).items()}
    (out / "settings.json").write_text(json.dumps(settings_d, indent=2) + "\n")
    doc = {
        "tool": "edge-bench",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": host,
        "host_summary": hostinfo.describe_host(host),
        "settings": settings_d,
        "results": [
            {
                **row,
                "model_stats": r.model.to_dict() if r.model else None,
                "pipeline": r.pipeline,
                "memory": r.memory,
                "power": r.power,
            }
            for r, row in zip(results, rows, strict=True)
        ],
    }
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    written = [out / "results.json", out / "results.csv", out / "settings.json"]
    if with_plots:
        written += _plots(out, results)
    return written


def _plots(out: Path, results: list[RunResult]) -> list[Path]:
    paths = []
    samples = {r.target.label: list(r.model.samples_ms) for r in results if r.model is not None}
    if samples:
        paths.append(plots.plot_latency(samples, out / "latency.png"))
    timelines = {r.target.label: r.timeline_ms for r in results if r.timeline_ms}
    if timelines:
        paths.append(plots.plot_timeline(timelines, out / "timeline.png"))
    # work per frame; the queue wait is latency, not work, and would dwarf it with a blocking source
    stages = {
        r.target.label: {k: v for k, v in r.pipeline["stages_ms"].items() if k != "queue"}
        for r in results
        if r.pipeline is not None
    }
    if stages:
        paths.append(
            plots.plot_stages(stages, out / "stages.png", title="Work per frame by stage (queue wait excluded)")
        )
    return paths


def _thresholds(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[str]:
    failures = []
    for row in rows:
        p99 = row.get("model_p99_ms", row.get("pipeline_p99_ms"))
        if args.fail_if_p99_over is not None and p99 is not None and p99 > args.fail_if_p99_over:
            failures.append(f"{row['model']}: p99 {p99:.2f} ms > --fail-if-p99-over {args.fail_if_p99_over:g} ms")
        fps = row.get("pipeline_fps")
        if args.fail_if_fps_under is not None and fps is not None and fps < args.fail_if_fps_under:
            failures.append(f"{row['model']}: pipeline {fps:.1f} fps < --fail-if-fps-under {args.fail_if_fps_under:g}")
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): argparse has printed why
        return int(e.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cameras = cameras_of(BenchSettings(sources=tuple(args.source or ["synthetic"])))
        split = split_cpu(args.cpu_budget, len(cameras))
    except (BenchError, ConfigError) as e:
        print(f"edge-bench: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    apply_opencv_threads(split)
    settings = _settings(args, split)
    host = hostinfo.host_info()
    print(f"host: {hostinfo.describe_host(host)}")
    given = f"; --threads {args.threads} overrides the intra-op share" if args.threads else ""
    print(f"cpu split: {split.describe()} ({split.to_dict()['rule']}{given})")
    if not TegrastatsSampler().available():
        log.info("tegrastats not found: no power/temperature samples (not a Jetson)")
    try:
        with tempfile.TemporaryDirectory(prefix="edge-bench-") as work:
            results = _run_all(args.targets, settings, Path(work))
    except BenchError as e:
        print(f"edge-bench: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    rows = [_row(r, results[0]) for r in results]
    print(format_table(rows))
    if len(cameras) > 1:
        print(format_cameras(results))
    for r in results:
        if r.model is not None and r.model.noisy:
            print(f"note: {r.target.label} model latency is noisy (cv {r.model.cv:.2f}); the host was busy")
    host["cpu_split"] = split.to_dict()
    written = _write_outputs(args.out, settings, results, rows, host, with_plots=not args.no_plots)
    print("wrote " + ", ".join(str(p) for p in written))
    failures = _thresholds(args, rows)
    for f in failures:
        print(f"FAIL {f}")
    return EXIT_THRESHOLD if failures else EXIT_OK
