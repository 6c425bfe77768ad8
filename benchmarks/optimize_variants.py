"""Torch eager vs ONNX Runtime FP32 vs ONNX Runtime INT8, side by side in one process.

For each architecture (default: ResNet18 and MobileNetV3-small) a classifier
is trained on synthetic-signs with ``edge-train`` (cached under
``bench-out/optimize_variants/runs/``; delete it to retrain), exported and
quantized exactly as ``edge-optimize`` does, then every variant is measured
on the same held-out images (top-1) and timed single-stream, batch 1,
*interleaved* in this process with :func:`models.bench.measure_interleaved`
(one query of each per round, the order rotated), so the ratios are
comparable even on a busy host. The speedup over ONNX Runtime FP32 is the
ratio of median thread CPU times with its 95 % paired-bootstrap interval
(:func:`models.stats.speedup_interval`; exact with the default one thread),
p50/p99 are wall time. ``--quick`` is a short smoke run (one small model).

With ``--sweep-sizes`` the same trained weights are also exported at other
input sizes (the classifiers pool globally, so any size runs), quantized with
the INT8 settings chosen at the training size, and timed FP32 vs INT8: how the
INT8 speedup of this CPU changes with the input resolution (accuracy is only
meaningful at the training size, so the sweep reports latency alone).

Prints a table, writes ``bench-out/optimize_variants.json``, a latency
chart ``bench-out/optimize_variants.png`` and, with a sweep, the speedup by
input size ``bench-out/optimize_variants_sizes.png``.

    .venv/bin/python benchmarks/optimize_variants.py --help
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import parse_with_quick

from models.bench import Interleaved, cpu_identity, measure_interleaved
from models.runtime.onnxrt import OrtOptions, OrtRuntime
from models.stats import speedup_interval
from optimize.checkpoint import build_torch_model, read_checkpoint
from optimize.config import CalibMethod
from optimize.data import load_samples, open_split
from optimize.export import check_parity, export_onnx, torch_outputs
from optimize.quantize import Int8Flavor, QuantSettings, prepare, quantize_int8, search_int8

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--archs", default="resnet18,mobilenet_v3_small", help="comma-separated zoo architectures")
    p.add_argument("--image-size", type=int, default=96, help="training and inference input size, pixels")
    p.add_argument("--train-size", type=int, default=3000, help="synthetic training images")
    p.add_argument("--val-size", type=int, default=500, help="synthetic held-out images (accuracy)")
    p.add_argument("--epochs", type=int, default=4, help="edge-train epochs (2-process DDP, the demo's recipe)")
    p.add_argument("--calib-samples", type=int, default=64, help="INT8 calibration images")
    p.add_argument("--threads", type=int, default=1, help="threads for torch and ONNX Runtime (same for both)")
    p.add_argument("--queries", type=int, default=40, help="minimum interleaved rounds (one query of each variant)")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per variant")
    p.add_argument(
        "--sweep-sizes",
        default="",
        metavar="S,S,...",
        help="also time FP32 vs INT8 at these input sizes (same weights), e.g. 64,128,160,224",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short smoke run: MobileNetV3-small at 64 px, 600 training images, 1 epoch, 20 rounds, 1 s",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench-out", help="output directory")
    return p


# --quick's defaults (flags given explicitly still win)
QUICK = {
    "archs": "mobilenet_v3_small",
    "image_size": 64,
    "train_size": 600,
    "val_size": 200,
    "epochs": 1,
    "calib_samples": 32,
    "queries": 20,
    "seconds": 1.0,
}


def ensure_run(arch: str, args: argparse.Namespace) -> Path:
    """A trained run directory for ``arch`` (trained with edge-train on first use)."""
    run = args.out / "optimize_variants" / "runs" / f"{arch}-{args.image_size}-{args.train_size}-{args.epochs}"
    if (run / "checkpoints" / "best.pt").is_file():
        return run
    # the demo's recipe (AdamW, warm-up, label smoothing, small per-process batches, 2 processes):
    # it trains both architectures from scratch to a useful accuracy in a few minutes
    cmd = [
        sys.executable,
        "-m",
        "training",
        "--config",
        str(ROOT / "training" / "configs" / "demo-signs.yaml"),
        "--arch",
        arch,
        "--image-size",
        str(args.image_size),
        "--train-size",
        str(args.train_size),
        "--val-size",
        str(args.val_size),
        "--epochs",
        str(args.epochs),
        "--output",
        str(run.parent),
        "--name",
        run.name,
        "--threads",
        "1",
        "--cache-dir",
        str(args.out / "optimize_variants" / "data"),
        "--no-progress",
    ]
    log.info("training %s: %s", arch, " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT)
    return run


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def bench_arch(arch: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ck = read_checkpoint(ensure_run(arch, args))
    model = build_torch_model(ck)
    work = args.out / "optimize_variants" / "models" / f"{arch}-{args.image_size}"
    work.mkdir(parents=True, exist_ok=True)
    val = load_samples(open_split(ck.dataset, "val"), args.val_size, ck.input_spec)
    calib = load_samples(open_split(ck.dataset, "train"), args.calib_samples, ck.input_spec).inputs
    labels = np.array([s.label for s in val.samples])
    fp32 = export_onnx(model, ck.input_spec, work / "fp32.onnx", task=ck.task).path
    ref = torch_outputs(model, val.inputs, ("logits",))
    parity = check_parity(fp32, {"logits": ref["logits"][:16]}, val.inputs[:16], atol=1e-3)
    opts = OrtOptions(providers=("CPUExecutionProvider",), intra_op_threads=args.threads)

    def ort_top1(path: Path) -> float:
        rt = OrtRuntime(path, opts)
        out = np.concatenate([rt.run(val.inputs[i : i + 32])["logits"] for i in range(0, len(val), 32)])
        return _top1(out, labels)

    base = ort_top1(fp32)
    int8 = {}
    for flavor in (Int8Flavor.CPU, Int8Flavor.TENSORRT):
        res = search_int8(
            fp32,
            work,
            calib,
            ort_top1,
            reference=base,
            max_drop_points=1.0,
            methods=list(CalibMethod),
            flavor=flavor,
            max_rounds=2,
        )
        int8[flavor] = res
    x = val.inputs[:1]
    xt = torch.from_numpy(x)
    rows: list[tuple[str, float, Any]] = [("torch eager fp32", _top1(ref["logits"], labels), None)]
    rows += [("ort fp32", base, fp32)]
    rows += [
        (f"ort int8 {f.value} ({r.best.settings.method.value})", r.best.accuracy, r.best.path) for f, r in int8.items()
    ]

    def eager() -> object:
        with torch.inference_mode():
            return model(xt)

    fns = {name: eager if path is None else (lambda rt=OrtRuntime(path, opts): rt.run(x)) for name, _, path in rows}
    timed = _time(fns, args)
    fp32_cpu = timed["ort fp32"].cpu_ms
    out = []
    for name, acc, path in rows:
        wall = timed[name].wall
        speedup = speedup_interval(fp32_cpu, timed[name].cpu_ms)
        out.append(
            {
                "arch": arch,
                "variant": name,
                "top1": round(acc, 4),
                "delta_points": round((acc - base) * 100, 2),
                "p50_ms": round(wall.p50_ms, 3),
                "p99_ms": round(wall.p99_ms, 3),
                "cv": round(wall.cv, 3),
                "cpu_p50_ms": round(timed[name].cpu.p50_ms, 3),
                "noisy": wall.noisy,
                "n": wall.n,
                "rounds": len(timed[name].wall_ms),
                "speedup_vs_ort_fp32": round(speedup.point, 2),
                "speedup_ci95": [round(speedup.low, 2), round(speedup.high, 2)],
                "size_mb": round(path.stat().st_size / 1e6, 2) if path else None,
            }
        )
    out[1]["parity_max_abs"] = round(parity.max_abs["logits"], 7)
    sizes = [int(v) for v in args.sweep_sizes.split(",") if v.strip()]
    sweep = [sweep_size(arch, model, ck, size, int8[Int8Flavor.CPU].best.settings, work, opts, args) for size in sizes]
    return out, sweep


def sweep_size(
    arch: str,
    model: torch.nn.Module,
    ck: Any,
    size: int,
    settings: QuantSettings,
    work: Path,
    opts: OrtOptions,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """FP32 vs INT8 latency of the same weights at input ``size`` (INT8 settings as chosen)."""
    spec = dataclasses.replace(ck.input_spec, shape=(ck.input_spec.shape[0], 3, size, size))
    d = work / f"size-{size}"
    d.mkdir(parents=True, exist_ok=True)
    fp32 = prepare(export_onnx(model, spec, d / "fp32.onnx", task=ck.task).path, d / "prepared.onnx")
    calib = load_samples(open_split(ck.dataset, "train"), args.calib_samples, spec).inputs
    int8 = quantize_int8(fp32, d / "int8.onnx", calib, settings)
    x = calib[:1]
    timed = _time(
        {"fp32": lambda rt=OrtRuntime(fp32, opts): rt.run(x), "int8": lambda rt=OrtRuntime(int8, opts): rt.run(x)}, args
    )
    speedup = speedup_interval(timed["fp32"].cpu_ms, timed["int8"].cpu_ms)
    return {
        "arch": arch,
        "size": size,
        "fp32_p50_ms": round(timed["fp32"].wall.p50_ms, 3),
        "int8_p50_ms": round(timed["int8"].wall.p50_ms, 3),
        "speedup": round(speedup.point, 2),
        "speedup_ci95": [round(speedup.low, 2), round(speedup.high, 2)],
    }


def _time(fns: dict[str, Any], args: argparse.Namespace) -> dict[str, Interleaved]:
    """All of ``fns`` round-robin; ``--seconds`` is per function."""
    n = len(fns)
    return measure_interleaved(
        fns,
        warmup_queries=5,
        min_rounds=args.queries,
        min_duration_s=args.seconds * n,
        max_duration_s=max(60.0, args.seconds * 4) * n,
    )


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        f"{'arch':20s} {'variant':34s} {'top1':>7s} {'Δpts':>6s} {'p50 ms':>8s} {'p99 ms':>8s} "
        f"{'cpu speedup [95% CI]':>22s} {'cv':>5s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lo, hi = r["speedup_ci95"]
        lines.append(
            f"{r['arch']:20s} {r['variant']:34s} {r['top1']:7.4f} {r['delta_points']:+6.2f} "
            f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['speedup_vs_ort_fp32']:>6.2f}x [{lo:.2f}, {hi:.2f}] "
            f"{r['cv']:5.2f}"
        )
    return "\n".join(lines)


def sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    head = f"{'arch':20s} {'size':>5s} {'fp32 p50 ms':>12s} {'int8 p50 ms':>12s} {'cpu speedup [95% CI]':>22s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lo, hi = r["speedup_ci95"]
        lines.append(
            f"{r['arch']:20s} {r['size']:5d} {r['fp32_p50_ms']:12.2f} {r['int8_p50_ms']:12.2f} "
            f"{r['speedup']:>8.2f}x [{lo:.2f}, {hi:.2f}]"
        )
    return "\n".join(lines)


def plot_sweep(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arch in dict.fromkeys(r["arch"] for r in rows):
        pts = sorted((r["size"], r["speedup"]) for r in rows if r["arch"] == arch)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=arch)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("input size, pixels")
    ax.set_ylabel("INT8 speedup over ORT FP32 (p50)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [f"{r['arch']}\n{r['variant']}" for r in rows]
    ax.barh(labels, [r["p50_ms"] for r in rows], color="tab:blue")
    ax.set_xlabel("p50 latency, ms (batch 1, single-stream)")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_with_quick(build_parser(), argv, QUICK)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    sweep: list[dict[str, Any]] = []
    for arch in (a.strip() for a in args.archs.split(",") if a.strip()):
        arch_rows, arch_sweep = bench_arch(arch, args)
        rows += arch_rows
        sweep += arch_sweep
    print(table(rows))
    if sweep:
        print("\nINT8 speedup by input size (same weights, INT8 settings chosen at the training size):")
        print(sweep_table(sweep))
        plot_sweep(sweep, args.out / "optimize_variants_sizes.png")
    meta = {
        "image_size": args.image_size,
        "threads": args.threads,
        "seconds": round(time.monotonic() - t0, 1),
        "host": _host(),
        "cpu": cpu_identity(),
        # how the variants were timed: one query of each per round, the order rotated every round
        "order": "interleaved per query, rotated each round (models.bench.measure_interleaved)",
    }
    print(f"\nhost: {meta['host']}; cpu: {meta['cpu']}")
    (args.out / "optimize_variants.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "sizes": sweep}, indent=2) + "\n"
    )
    plot(rows, args.out / "optimize_variants.png")
    print(f"\nwrote {args.out / 'optimize_variants.json'} and {args.out / 'optimize_variants.png'}")
    return 0


def _host() -> str:
    from optimize.variants import host_description

    return host_description(None)


if __name__ == "__main__":
    sys.exit(main())
