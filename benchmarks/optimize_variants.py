"""Torch eager vs ONNX Runtime FP32 vs ONNX Runtime INT8, side by side in one process.

For each architecture (default: ResNet18 and MobileNetV3-small) a classifier
is trained on synthetic-signs with ``edge-train`` (cached under
``bench-out/optimize_variants/runs/``; delete it to retrain), exported and
quantized exactly as ``edge-optimize`` does, then every variant is measured
on the same held-out images (top-1) and timed single-stream, batch 1, with
:func:`models.bench.measure`, one after the other in this process so the
ratios are comparable even on a busy host.

Prints a table, writes ``bench-out/optimize_variants.json`` and a latency
chart ``bench-out/optimize_variants.png``.

    .venv/bin/python benchmarks/optimize_variants.py --help
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.bench import LatencyStats, measure  # noqa: E402
from models.runtime.onnxrt import OrtOptions, OrtRuntime  # noqa: E402
from optimize.checkpoint import build_torch_model, read_checkpoint  # noqa: E402
from optimize.config import CalibMethod  # noqa: E402
from optimize.data import load_samples, open_split  # noqa: E402
from optimize.export import check_parity, export_onnx, torch_outputs  # noqa: E402
from optimize.quantize import Int8Flavor, search_int8  # noqa: E402

log = logging.getLogger("bench")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", default="resnet18,mobilenet_v3_small", help="comma-separated zoo architectures")
    p.add_argument("--image-size", type=int, default=96, help="training and inference input size, pixels")
    p.add_argument("--train-size", type=int, default=1200, help="synthetic training images")
    p.add_argument("--val-size", type=int, default=300, help="synthetic held-out images (accuracy)")
    p.add_argument("--epochs", type=int, default=2, help="edge-train epochs")
    p.add_argument("--calib-samples", type=int, default=64, help="INT8 calibration images")
    p.add_argument("--threads", type=int, default=1, help="threads for torch and ONNX Runtime (same for both)")
    p.add_argument("--queries", type=int, default=40, help="minimum timed queries per variant")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per variant")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out", help="output directory")
    return p


def ensure_run(arch: str, args: argparse.Namespace) -> Path:
    """A trained run directory for ``arch`` (trained with edge-train on first use)."""
    run = args.out / "optimize_variants" / "runs" / f"{arch}-{args.image_size}-{args.train_size}-{args.epochs}"
    if (run / "checkpoints" / "best.pt").is_file():
        return run
    cmd = [sys.executable, "-m", "training", "--arch", arch, "--image-size", str(args.image_size),
           "--train-size", str(args.train_size), "--val-size", str(args.val_size), "--epochs", str(args.epochs),
           "--output", str(run.parent), "--name", run.name, "--threads", str(max(args.threads, 2)),
           "--cache-dir", str(args.out / "optimize_variants" / "data"), "--no-progress"]
    log.info("training %s: %s", arch, " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT)
    return run


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def bench_arch(arch: str, args: argparse.Namespace) -> list[dict[str, Any]]:
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
        res = search_int8(fp32, work, calib, ort_top1, reference=base, max_drop_points=1.0,
                          methods=list(CalibMethod), flavor=flavor, max_rounds=2)
        int8[flavor] = res
    x = val.inputs[:1]
    xt = torch.from_numpy(x)
    rows: list[tuple[str, float, Any]] = [("torch eager fp32", _top1(ref["logits"], labels), None)]
    rows += [("ort fp32", base, fp32)]
    rows += [(f"ort int8 {f.value} ({r.best.settings.method.value})", r.best.accuracy, r.best.path)
             for f, r in int8.items()]
    out = []
    for name, acc, path in rows:
        if path is None:
            with torch.inference_mode():
                stats = _time(lambda: model(xt), args, name)
        else:
            rt = OrtRuntime(path, opts)
            stats = _time(lambda rt=rt: rt.run(x), args, name)
        out.append({"arch": arch, "variant": name, "top1": round(acc, 4), "delta_points": round((acc - base) * 100, 2),
                    "p50_ms": round(stats.p50_ms, 3), "p99_ms": round(stats.p99_ms, 3), "cv": round(stats.cv, 3),
                    "noisy": stats.noisy, "n": stats.n,
                    "size_mb": round(path.stat().st_size / 1e6, 2) if path else None})
    fp32_p50 = out[1]["p50_ms"]
    for r in out:
        r["speedup_vs_ort_fp32"] = round(fp32_p50 / r["p50_ms"], 2)
    out[1]["parity_max_abs"] = round(parity.max_abs["logits"], 7)
    return out


def _time(fn: Any, args: argparse.Namespace, label: str) -> LatencyStats:
    return measure(fn, warmup_queries=5, min_queries=args.queries, min_duration_s=args.seconds,
                   max_duration_s=max(60.0, args.seconds * 4), label=label)


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = f"{'arch':20s} {'variant':34s} {'top1':>7s} {'Δpts':>6s} {'p50 ms':>8s} {'p99 ms':>8s} {'speedup':>8s} {'cv':>5s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['arch']:20s} {r['variant']:34s} {r['top1']:7.4f} {r['delta_points']:+6.2f} "
                     f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['speedup_vs_ort_fp32']:7.2f}x {r['cv']:5.2f}")
    return "\n".join(lines)


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
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    for arch in (a.strip() for a in args.archs.split(",") if a.strip()):
        rows += bench_arch(arch, args)
    print(table(rows))
    meta = {"image_size": args.image_size, "threads": args.threads, "seconds": round(time.monotonic() - t0, 1),
            "host": _host()}
    (args.out / "optimize_variants.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    plot(rows, args.out / "optimize_variants.png")
    print(f"\nwrote {args.out / 'optimize_variants.json'} and {args.out / 'optimize_variants.png'}")
    return 0


def _host() -> str:
    from optimize.variants import host_description

    return host_description(None)


if __name__ == "__main__":
    sys.exit(main())
