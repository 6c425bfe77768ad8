"""Perception pipeline benchmark: model-only throughput vs end-to-end pipeline FPS, and hot swaps.

For each model (ResNet18 at 224x224, where inference dominates, and
MobileNetV3-small at 224x224, a small one) it builds the network with torch
(random weights: speed does not depend on them), exports it to ONNX into a
real bundle, writes a real MJPG video with OpenCV, and measures in one run:

1. model-only throughput: MLPerf single-stream queries of the ONNX Runtime
   session on a preprocessed frame (``models.bench.measure``);
2. pipeline FPS: the agent's capture → queue → inference pipeline decoding
   the video (looped, blocking: nothing dropped) for the same duration;
3. ten hot swaps between two loaded copies of the model while the video is
   paced like a live camera (drop-oldest queue, at ~60 % of the model's
   throughput): frames dropped and swap time (request → applied between frames).

With several cameras (four looped copies of the video, named cam0..cam3):

4. four cameras batched (one frame of each per inference) against the same four
   cameras unbatched (``max_batch=1``: one frame at a time) and against the
   model's own batch-4 throughput (model-only, four images per query);
5. p50/p99 capture→result latency per camera, batched and unbatched, four
   cameras paced like live ones (drop-oldest) at a combined 60 % of the slower
   of the two modes' rates;
6. ten hot swaps with those four paced cameras: frames dropped.

``--load`` runs everything with another process keeping one core busy
(``gates.busy_core``), to show what a busy neighbour does to these figures.

Model-only and pipeline runs are interleaved for ``--rounds`` rounds, the order
rotated every round (``common.run_rounds``); the ratio reported is the median of
the per-round ratios (each pipeline run against the model-only run of its round),
with 95 % intervals of the per-round means in the JSON. Prints a table and
writes ``bench-out/pipeline.json``. Target: pipeline FPS >= 90 % of model-only
throughput when inference dominates; 0 frames dropped by swaps. Timings on a
shared machine are noisy; the ratios come from one run.

    python benchmarks/pipeline.py [--duration 9] [--rounds 3] [--models resnet18 mobilenet_v3_small] [--swaps 10]
    python benchmarks/pipeline.py --quick     # a short smoke run
    python benchmarks/pipeline.py --quick --load   # the same with one core kept busy
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from common import (
    RoundResult,
    by_scenario,
    mean_interval,
    parse_with_quick,
    round_info,
    run_rounds,
)  # benchmarks/common.py

from edge_agent.perception.camera import FrameSource, open_source, parse_source
from edge_agent.perception.inference import load_model
from edge_agent.perception.pipeline import DropPolicy, Pipeline, PipelineConfig, latency_percentiles
from models.bench import measure
from models.bundle import (
    DecoderKind,
    DecoderSpec,
    Format,
    Gates,
    HardwareRequirements,
    Manifest,
    OutputSpec,
    Precision,
    Provenance,
    SelectionEntry,
    Task,
    TensorSpec,
    Variant,
    write_bundle,
)
from models.hardware import HARDWARE_CLASSES
from models.preprocess import Preprocessor
from models.runtime import Model

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.pipeline")
CAMERAS = 4


def export_bundle(arch: str, directory: Path, *, version: str = "1.0.0") -> Path:
    """Build ``arch`` with torch, export ONNX (opset 17, dynamic batch) and write a bundle."""
    import torch

    from models.zoo import build_model, default_input_spec

    spec = default_input_spec(arch, "classification")
    net = build_model(arch, "classification", 1000).eval()
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = directory / "model.onnx"
    dummy = torch.zeros(1, 3, spec.height, spec.width)
    with torch.no_grad():
        torch.onnx.export(
            net,
            (dummy,),
            str(onnx_path),
            input_names=[spec.name],
            output_names=["logits"],
            opset_version=17,
            dynamic_axes={spec.name: {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    data = onnx_path.read_bytes()
    variant = Variant(
        "onnx-fp32",
        Format.ONNX,
        Precision.FP32,
        "model.onnx",
        hashlib.sha256(data).hexdigest(),
        len(data),
        requires=HardwareRequirements(accelerators=("cpu", "cuda", "jetson")),
    )
    manifest = Manifest(
        name=arch.replace("_", "-"),
        version=version,
        task=Task.CLASSIFICATION,
        labels=tuple(f"class-{i}" for i in range(1000)),
        input=spec,
        output=OutputSpec((TensorSpec("logits", (None, 1000), "logits"),), DecoderSpec(DecoderKind.TOPK, top_k=5)),
        variants=(variant,),
        selection={hw: SelectionEntry(("onnx-fp32",), "only variant") for hw in HARDWARE_CLASSES},
        gates=Gates(latency_budget_ms=1000.0),
        provenance=Provenance("benchmarks/pipeline.py", "none", "bench", "2026-01-01T00:00:00Z"),
        arch=arch,
    )
    write_bundle(directory, manifest)
    return directory


def write_video(path: Path, *, frames: int = 240, size: tuple[int, int] = (640, 480)) -> Path:
    """A real MJPG video: moving gradients and shapes so every frame decodes differently."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, size)
    w, h = size
    xx, yy = np.meshgrid(np.arange(w), np.arange(h))
    for i in range(frames):
        img = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, (xx + yy + i) % 256], axis=-1).astype(np.uint8)
        cv2.circle(img, ((i * 7) % w, h // 2), 40, (255, 255, 255), -1)
        writer.write(img)
    writer.release()
    return path


def model_only(bundle: Path, frame: np.ndarray, duration: float) -> dict[str, float]:
    with Model(bundle) as model:
        batch = Preprocessor(model.input_spec)(frame)[None]
        stats = measure(
            lambda: model.runtime.run(batch),
            warmup_queries=5,
            warmup_s=1.0,
            min_queries=20,
            min_duration_s=duration,
            max_duration_s=duration * 3,
            label=bundle.name,
        )
    return {
        "qps": stats.throughput_qps,
        "p50_ms": stats.p50_ms,
        "p99_ms": stats.p99_ms,
        "cv": stats.cv,
    }


def pipeline_fps(bundle: Path, video: Path, duration: float) -> dict[str, float]:
    model = load_model(bundle)
    pipe = Pipeline(open_source(str(video), loop=True), model, PipelineConfig(queue_size=8))
    pipe.start()
    time.sleep(1.0)  # warm-up
    before, t0 = pipe.counters.snapshot(), time.monotonic()
    time.sleep(duration)
    after, t1 = pipe.counters.snapshot(), time.monotonic()
    final = pipe.stop()
    model.close()
    return {
        "fps": (after["inferred"] - before["inferred"]) / (t1 - t0),
        "dropped": final["dropped"],
        "decode_ms": final["decode_ms"],
        "preprocess_ms": final["preprocess_ms"],
        "infer_ms": final["infer_ms"],
    }


def hot_swaps(bundle: Path, video: Path, swaps: int, fps: float) -> dict[str, float]:
    """``swaps`` zero-drop swaps between two loaded copies while a live-paced stream runs."""
    a, b = load_model(bundle), load_model(bundle)
    pipe = Pipeline(
        open_source(parse_source(str(video), loop=True)),
        a,
        PipelineConfig(queue_size=4, drop_policy=DropPolicy.DROP_OLDEST, max_fps=fps),
    )
    pipe.start()
    time.sleep(1.0)
    dropped_before = pipe.counters.dropped
    times, dropped_by_swaps = [], 0
    for i in range(swaps):
        report = pipe.swap_model(b if i % 2 == 0 else a)
        times.append(report.swap_ms)
        dropped_by_swaps += report.frames_dropped
        time.sleep(max(0.3, 4.0 / fps))  # a few frames on each model between swaps
    dropped_total = pipe.counters.dropped - dropped_before
    final = pipe.stop()
    a.close()
    b.close()
    return {
        "swaps": swaps,
        "stream_fps": fps,
        "dropped_during_swaps": dropped_by_swaps,
        "dropped_whole_run": dropped_total,
        "swap_ms_mean": float(np.mean(times)),
        "swap_ms_max": float(np.max(times)),
        "frames": final["inferred"],
    }


def _cameras(video: Path, *, live_fps: float | None = None) -> dict[str, FrameSource]:
    """``CAMERAS`` looped copies of ``video``; with ``live_fps`` paced and classed as live (drop-oldest)."""
    return {f"cam{i}": open_source(parse_source(str(video), loop=True, fps=live_fps)) for i in range(CAMERAS)}


def model_batch(bundle: Path, frame: np.ndarray, duration: float, batch: int) -> dict[str, float]:
    """Model-only throughput at ``batch`` images per query (images/s)."""
    with Model(bundle) as model:
        x = np.stack([Preprocessor(model.input_spec)(frame)] * batch)
        stats = measure(
            lambda: model.runtime.run(x),
            warmup_queries=3,
            warmup_s=0.5,
            min_queries=10,
            min_duration_s=duration,
            max_duration_s=duration * 3,
            label=f"{bundle.name}-b{batch}",
        )
    return {"fps": stats.throughput_qps * batch, "p50_ms": stats.p50_ms, "p99_ms": stats.p99_ms}


def cameras_fps(bundle: Path, video: Path, duration: float, *, max_batch: int | None) -> dict[str, Any]:
    """Four blocking (file) cameras for ``duration`` after a warm-up: frames/s of all of them."""
    model = load_model(bundle)
    pipe = Pipeline(_cameras(video), model, PipelineConfig(queue_size=8, max_batch=max_batch))
    pipe.start()
    time.sleep(1.0)
    before, b0, t0 = pipe.counters.snapshot(), pipe.batches, time.monotonic()
    time.sleep(duration)
    after, b1, t1 = pipe.counters.snapshot(), pipe.batches, time.monotonic()
    final = pipe.stop()
    model.close()
    inferred = after["inferred"] - before["inferred"]
    return {
        "fps": inferred / (t1 - t0),
        "mean_batch": inferred / max(1, b1 - b0),
        "dropped": final["dropped"],
        "infer_ms": final["infer_ms"],
    }


def live_cameras(
    bundle: Path, video: Path, swaps: int, fps_per_camera: float, *, max_batch: int | None
) -> dict[str, Any]:
    """Four paced live cameras: capture→result latency per camera, then ``swaps`` hot swaps."""
    a, b = load_model(bundle), load_model(bundle)
    pipe = Pipeline(
        _cameras(video, live_fps=fps_per_camera),
        a,
        PipelineConfig(queue_size=4, drop_policy=DropPolicy.DROP_OLDEST, keep_outcomes=200_000, max_batch=max_batch),
    )
    pipe.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    time.sleep(max(1.0, 40.0 / fps_per_camera))  # at least 40 frames per camera before any swap
    t1 = time.monotonic()
    dropped_before = pipe.counters.dropped
    times, dropped_by_swaps = [], 0
    for i in range(swaps):
        report = pipe.swap_model(b if i % 2 == 0 else a)
        times.append(report.swap_ms)
        dropped_by_swaps += report.frames_dropped
        time.sleep(max(0.3, 4.0 / fps_per_camera))
    dropped_total = pipe.counters.dropped - dropped_before
    final = pipe.stop()
    a.close()
    b.close()
    window = [o for o in pipe.outcomes if t0 <= o.captured_at and o.done_at <= t1]
    per_camera = {}
    for name in pipe.feeds:
        lat = latency_percentiles([o.latency_ms for o in window if o.camera == name])
        per_camera[name] = {
            "p50_ms": lat["p50_ms"],
            "p99_ms": lat["p99_ms"],
            "frames": sum(o.camera == name for o in window),
        }
    return {
        "fps_per_camera": fps_per_camera,
        "batch": pipe.batch_size,
        "latency": per_camera,
        "swaps": swaps,
        "dropped_during_swaps": dropped_by_swaps,
        "dropped_whole_swap_run": dropped_total,
        "swap_ms_mean": float(np.mean(times)) if times else 0.0,
        "swap_ms_max": float(np.max(times)) if times else 0.0,
        "frames": final["inferred"],
    }


def multi_camera(
    bundle: Path, video: Path, frame: np.ndarray, *, duration: float, rounds: int, swaps: int
) -> dict[str, Any]:
    """Scenarios 4-6 for one model; the three rates interleaved in rotated rounds."""
    each = duration / rounds
    results: list[RoundResult[dict[str, Any]]] = run_rounds(
        {
            "batched": functools.partial(cameras_fps, bundle, video, each, max_batch=None),
            "unbatched": functools.partial(cameras_fps, bundle, video, each, max_batch=1),
            "model_batch4": functools.partial(model_batch, bundle, frame, each, CAMERAS),
        },
        rounds,
    )
    runs = by_scenario(results)
    rates = {k: [r["fps"] for r in v] for k, v in runs.items()}
    # per round, against the scenarios measured in the same round
    vs_unbatched = sorted(bt / ub for bt, ub in zip(rates["batched"], rates["unbatched"], strict=True))
    vs_model = sorted(bt / m for bt, m in zip(rates["batched"], rates["model_batch4"], strict=True))
    # live cameras at a combined 60 % of the slower mode's rate: both modes keep up, so what the
    # swaps drop is theirs, and the latencies compare the same offered load
    fps_each = round(0.6 * min(float(np.median(rates["batched"])), float(np.median(rates["unbatched"]))) / CAMERAS, 1)
    live = {
        "batched": live_cameras(bundle, video, swaps, fps_each, max_batch=None),
        "unbatched": live_cameras(bundle, video, 0, fps_each, max_batch=1),
    }
    return {
        "fps": {
            k: {"median": float(np.median(v)), "rounds": [round(x, 2) for x in v], "ci95": _ci(v)}
            for k, v in rates.items()
        },
        "mean_batch": {
            k: float(np.median([r["mean_batch"] for r in v])) for k, v in runs.items() if k != "model_batch4"
        },
        "batched_vs_unbatched": vs_unbatched[len(vs_unbatched) // 2],
        "batched_vs_model_batch4": vs_model[len(vs_model) // 2],
        "live": live,
        "round_order": round_info(results),
    }


def print_multi(rows: list[dict[str, Any]]) -> None:
    print()
    head = (
        f"{'model':<20} {'4 cams batched':>14} {'unbatched':>9} {'model b4':>9} {'x unbatched':>11} "
        f"{'/ model b4':>10} {'mean batch':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        mc = r["cameras"]
        f = mc["fps"]
        print(
            f"{r['model']:<20} {f['batched']['median']:>14.1f} {f['unbatched']['median']:>9.1f} "
            f"{f['model_batch4']['median']:>9.1f} {mc['batched_vs_unbatched']:>11.2f} "
            f"{mc['batched_vs_model_batch4']:>10.1%} {mc['mean_batch']['batched']:>10.2f}"
        )
    print()
    head = f"{'model':<20} {'mode':<10} {'camera':<7} {'fps/cam':>7} {'p50 ms':>7} {'p99 ms':>7} {'frames':>6}"
    print(head)
    print("-" * len(head))
    for r in rows:
        for mode, live in r["cameras"]["live"].items():
            for cam, lat in live["latency"].items():
                print(
                    f"{r['model']:<20} {mode:<10} {cam:<7} {live['fps_per_camera']:>7.1f} {lat['p50_ms']:>7.1f} "
                    f"{lat['p99_ms']:>7.1f} {lat['frames']:>6}"
                )
    print()
    for r in rows:
        sw = r["cameras"]["live"]["batched"]
        print(
            f"{r['model']}: {sw['swaps']} swaps with {CAMERAS} live cameras at {sw['fps_per_camera']} fps each: "
            f"{sw['dropped_during_swaps']} frames dropped during the swaps ({sw['dropped_whole_swap_run']} in the "
            f"whole swap run), swap {sw['swap_ms_mean']:.2f} ms mean, {sw['swap_ms_max']:.2f} ms max"
        )


def plot(rows: list[dict[str, object]], path: Path) -> Path:
    """Grouped bars: model-only throughput vs pipeline FPS per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(r["model"]) for r in rows]
    qps = [float(r["model_only"]["qps"]) for r in rows]  # type: ignore[index]
    fps = [float(r["pipeline"]["fps"]) for r in rows]  # type: ignore[index]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x - 0.2, qps, 0.4, label="model-only (queries/s)")
    ax.bar(x + 0.2, fps, 0.4, label="pipeline on video (frames/s)")
    for i, r in enumerate(rows):
        ax.text(x[i] + 0.2, fps[i], f"{float(r['pipeline_vs_model']):.0%}", ha="center", va="bottom")  # type: ignore[arg-type]
    ax.set_xticks(x, names)
    ax.set(ylabel="per second", title="Model-only throughput vs end-to-end pipeline FPS")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _median(runs: list[dict[str, float]], key: str) -> dict[str, Any]:
    """The run with the median ``key``."""
    return dict(sorted(runs, key=lambda r: r[key])[len(runs) // 2])


def _ci(values: list[float], *, digits: int = 2) -> list[float]:
    """The 95 % Student-t interval of the per-round mean, as ``[low, high]``."""
    iv = mean_interval(values)
    return [round(iv.low, digits), round(iv.high, digits)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--duration",
        type=float,
        default=9.0,
        help="measured seconds per model and mode (all rounds)",
    )
    p.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v3_small"])
    p.add_argument("--swaps", type=int, default=10, help="hot swaps with one camera")
    p.add_argument("--swaps-4", type=int, default=10, help=f"hot swaps with {CAMERAS} cameras")
    p.add_argument("--rounds", type=int, default=3, help="alternating model-only/pipeline rounds (median kept)")
    p.add_argument(
        "--quick", action="store_true", help="a short smoke run: MobileNetV3-small, 2 s per mode, 2 rounds, 2 swaps"
    )
    p.add_argument("--load", action="store_true", help="keep one core busy with another process the whole run")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench-out/pipeline[-load].json)")
    args = parse_with_quick(p, argv, {"models": ["mobilenet_v3_small"], "duration": 2.0, "rounds": 2, "swaps": 2})
    logging.basicConfig(level=logging.WARNING)
    out = args.out or ROOT / "bench-out" / ("pipeline-load.json" if args.load else "pipeline.json")
    with _neighbour(args.load) as pid:
        if pid is not None:
            print(f"load: process {pid} keeps one core busy for the whole run")
        rows = _measure(args)
    _report(rows, out, loaded=args.load)
    return 0


@contextlib.contextmanager
def _neighbour(on: bool) -> Any:
    if not on:
        yield None
        return
    from gates import busy_core  # benchmarks/gates.py: the busy-neighbour process the gate benchmark uses

    with busy_core() as pid:
        yield pid


def _measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        video = write_video(Path(tmp) / "drive.avi")
        frame = open_source(str(video)).read()
        if frame is None:
            raise RuntimeError(f"OpenCV decoded no frame from {video}")
        for arch in args.models:
            bundle = export_bundle(arch, Path(tmp) / arch)
            # interleave the two measurements (order rotated per round) so a load change on a
            # shared host hits both alike
            each = args.duration / args.rounds
            results: list[RoundResult[dict[str, float]]] = run_rounds(
                {
                    "model_only": functools.partial(model_only, bundle, frame.image, each),
                    "pipeline": functools.partial(pipeline_fps, bundle, video, each),
                },
                args.rounds,
            )
            runs = by_scenario(results)
            m_runs, p_runs = runs["model_only"], runs["pipeline"]
            m = _median(m_runs, "qps")
            pl = _median(p_runs, "fps")
            m["qps_rounds"] = [round(x["qps"], 2) for x in m_runs]
            m["qps_ci95"] = _ci([x["qps"] for x in m_runs])
            pl["fps_rounds"] = [round(x["fps"], 2) for x in p_runs]
            pl["fps_ci95"] = _ci([x["fps"] for x in p_runs])
            # each round's pipeline FPS against the model-only rate measured in the same round
            ratios = sorted(pr["fps"] / mr["qps"] for pr, mr in zip(p_runs, m_runs, strict=True))
            sw = hot_swaps(bundle, video, args.swaps, fps=round(0.6 * min(m["qps"], pl["fps"]), 1))
            rows.append(
                {
                    "model": arch,
                    "model_only": m,
                    "pipeline": pl,
                    "swaps": sw,
                    "pipeline_vs_model": ratios[len(ratios) // 2],
                    "pipeline_vs_model_rounds": [round(r, 3) for r in ratios],
                    "pipeline_vs_model_ci95": _ci(ratios, digits=3),
                    "round_order": round_info(results),
                    "cameras": multi_camera(
                        bundle, video, frame.image, duration=args.duration, rounds=args.rounds, swaps=args.swaps_4
                    ),
                }
            )
    return rows


def _report(rows: list[dict[str, Any]], out: Path, *, loaded: bool) -> None:
    print(f"host: {'one core kept busy by another process' if loaded else 'no added load'}")
    header = (
        f"{'model':<20} {'model qps':>9} {'p50 ms':>7} {'pipe fps':>8} {'ratio':>6} {'infer':>6} "
        f"{'decode':>6} {'pre':>5} {'swaps':>5} {'dropped':>7} {'swap ms':>8} {'max':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        m, pl, sw = r["model_only"], r["pipeline"], r["swaps"]
        print(
            f"{r['model']:<20} {m['qps']:>9.1f} {m['p50_ms']:>7.2f} {pl['fps']:>8.1f} "
            f"{r['pipeline_vs_model']:>6.1%} {pl['infer_ms']:>6.2f} {pl['decode_ms']:>6.2f} "
            f"{pl['preprocess_ms']:>5.2f} {sw['swaps']:>5} {sw['dropped_during_swaps']:>7} "
            f"{sw['swap_ms_mean']:>8.2f} {sw['swap_ms_max']:>6.2f}"
        )
    print_multi(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "pipeline",
                "load": "one core busy" if loaded else "none",
                "rows": rows,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
    )
    for r in rows:
        print(
            f"{r['model']}: pipeline/model ratio per round {r['pipeline_vs_model_rounds']} "
            f"(95% CI of the mean {r['pipeline_vs_model_ci95']}; model qps {r['model_only']['qps_rounds']}, "
            f"pipeline fps {r['pipeline']['fps_rounds']}; order {r['round_order']})"
        )
    png = plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    sys.exit(main())
