"""Per camera frame: numpy preprocessing + a tensor-form variant vs the frame-form variant.

The same FP32 ONNX model (``models.zoo``, fixed seed: latency does not depend on the
weights) is exported once and given its frame-form twin with
:func:`optimize.frame_input.write_frame_variant`. Both are served as the agent serves them
(ONNX Runtime, CPU, one intra-op thread, no spinning) on a camera-sized BGR frame
(``--frame``, default 1280x720): each query resizes the frame with OpenCV (the part both
forms keep), then either

- ``tensor``: :class:`models.preprocess.Preprocessor` (channel flip, float32 multiply-add,
  transpose to NCHW, in numpy) and the tensor-form session, or
- ``frame``: the frame-form session on the resized uint8 frame (the same work in the graph).

Scenarios run in rotated rounds (:func:`common.run_rounds`: each round runs every scenario
for ``--queries`` queries, the order rotated each round), recording every query's wall time
and the calling thread's CPU time. Per scenario: the median with its bootstrap interval;
the frame form's speedup is ``median(tensor) / median(frame)`` with its 95 % paired-bootstrap
interval (:func:`models.stats.speedup_interval`, query *i* of a round paired with query *i*
of the other scenario in the same round). The numpy preprocessing alone (timed inside the
``tensor`` queries) shows what the frame form moves into the graph. It also records which
of the prepended nodes survive ONNX Runtime's graph optimizations.

Prints a table and writes ``bench-out/frame_input.json``.

    .venv/bin/python benchmarks/frame_input.py --quick
    .venv/bin/python benchmarks/frame_input.py --archs mobilenet_v3_small,resnet18 --sizes 96,224
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import by_scenario, fmt_interval, median_interval, parse_with_quick, round_info, run_rounds

from models.bench import cpu_identity
from models.bundle import InputForm, InputSpec, Task
from models.preprocess import Preprocessor, resize_frame
from models.runtime.onnxrt import OrtOptions, OrtRuntime
from models.stats import speedup_interval
from optimize.export import export_onnx
from optimize.frame_input import write_frame_variant

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench")
SCENARIOS = ("tensor", "frame")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--archs", default="mobilenet_v3_small,resnet18", help="comma-separated models.zoo classifiers")
    p.add_argument("--sizes", default="96,224", help="comma-separated square input sizes")
    p.add_argument("--frame", default="1280x720", help="camera frame WxH")
    p.add_argument("--rounds", type=int, default=10, help="rotated rounds")
    p.add_argument("--queries", type=int, default=40, help="queries per scenario per round")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out", help="output directory")
    p.add_argument("--quick", action="store_true", help="short run: MobileNetV3-small at 224 px, 4 rounds of 15")
    return p


QUICK = {"archs": "mobilenet_v3_small", "sizes": "224", "rounds": 4, "queries": 15}


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: {option} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 16 for v in values):
        raise SystemExit(f"error: {option} needs sizes >= 16, got {text!r}")
    return values


def _frame_size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 16 or int(h) < 16:
        raise SystemExit(f"error: --frame must be WxH like 1280x720, got {text!r}")
    return int(w), int(h)


def _camera_frame(w: int, h: int) -> np.ndarray:
    """A camera-like BGR frame: smooth gradients with noise (what a real scene compresses like)."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    noise = np.random.default_rng(0).normal(0.0, 12.0, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _models(arch: str, size: int, work: Path) -> tuple[InputSpec, Path, Path]:
    import torch

    from models.zoo import build_model, default_input_spec

    torch.manual_seed(0)
    model = build_model(arch, "classification", 10, image_size=size).eval()
    spec = dataclasses.replace(default_input_spec(arch, "classification"), shape=(None, 3, size, size))
    tensor = work / f"{arch}-{size}.onnx"
    export_onnx(model, spec, tensor, task=Task.CLASSIFICATION)
    return spec, tensor, write_frame_variant(tensor, work / f"{arch}-{size}-frame.onnx", spec)


def _surviving(path: Path, work: Path) -> list[str]:
    """The prepended nodes ONNX Runtime's optimized graph still has (by op type)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # not the notice that a dumped optimized graph is host-specific
    so.optimized_model_filepath = str(work / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(work / "optimized.onnx")).graph
    return sorted(n.op_type for n in graph.node if n.name.startswith("edgefleet_frame_"))


def _scenario(
    spec: InputSpec, rt: OrtRuntime, form: InputForm, frame: np.ndarray, queries: int
) -> Callable[[], dict[str, list[float]]]:
    pre = Preprocessor(spec, form)  # on the resized frame: the numpy part (tensor), or nothing left (frame)

    def run() -> dict[str, list[float]]:
        wall, cpu, prep = [], [], []
        for _ in range(queries):
            t0, c0 = time.perf_counter(), time.thread_time()
            resized, _ = resize_frame(frame, spec)  # OpenCV, both forms
            t1 = time.perf_counter()
            x = pre(resized)
            t2 = time.perf_counter()
            rt.run(x[None])
            wall.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.thread_time() - c0) * 1e3)
            prep.append((t2 - t1) * 1e3)
        return {"wall_ms": wall, "cpu_ms": cpu, "preprocess_ms": prep}

    return run


def measure(arch: str, size: int, frame: np.ndarray, rounds: int, queries: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-frame-bench-") as tmp:
        work = Path(tmp)
        spec, tensor_path, frame_path = _models(arch, size, work)
        opts = OrtOptions(providers=("CPUExecutionProvider",), intra_op_threads=1, allow_spinning=False)
        rts = {"tensor": OrtRuntime(tensor_path, opts), "frame": OrtRuntime(frame_path, opts)}
        try:
            forms = {"tensor": InputForm.TENSOR, "frame": InputForm.FRAME}
            scenarios = {n: _scenario(spec, rts[n], forms[n], frame, queries) for n in SCENARIOS}
            for fn in scenarios.values():  # warm-up, untimed
                fn()
            results = run_rounds(scenarios, rounds)
            surviving = _surviving(frame_path, work)
        finally:
            for rt in rts.values():
                rt.close()
    per = by_scenario(results)
    flat = {n: {k: [v for r in per[n] for v in r[k]] for k in ("wall_ms", "cpu_ms", "preprocess_ms")} for n in per}
    row: dict[str, Any] = {"arch": arch, "size": size, "round_order": round_info(results), "surviving_nodes": surviving}
    for n in SCENARIOS:
        row[n] = {
            "queries": len(flat[n]["wall_ms"]),
            "wall_ms": median_interval(flat[n]["wall_ms"]).to_dict(),
            "cpu_ms": median_interval(flat[n]["cpu_ms"]).to_dict(),
            "preprocess_ms": median_interval(flat[n]["preprocess_ms"]).to_dict(),
        }
    for metric in ("wall_ms", "cpu_ms"):
        row[f"speedup_{metric.removesuffix('_ms')}"] = speedup_interval(
            flat["tensor"][metric], flat["frame"][metric], paired=True
        ).to_dict()
    return row


def _cell(d: dict[str, float], spec: str = ".3f") -> str:
    from models.stats import Interval

    return fmt_interval(Interval(d["point"], d["low"], d["high"], d["confidence"]), spec)


def table(rows: Sequence[dict[str, Any]], frame_wh: tuple[int, int]) -> str:
    lines = [
        f"per frame ({frame_wh[0]}x{frame_wh[1]} BGR, resize included in both), ONNX Runtime CPU, 1 thread; "
        "medians [95% CI]",
        f"{'arch':20s} {'size':>4s}  {'numpy preprocess ms':>26s}  {'tensor: cpu ms':>26s}  {'frame: cpu ms':>26s}"
        f"  {'frame speedup cpu':>20s}  {'frame speedup wall':>20s}  prepended nodes left",
    ]
    for r in rows:
        lines.append(
            f"{r['arch']:20s} {r['size']:4d}  {_cell(r['tensor']['preprocess_ms']):>26s}  "
            f"{_cell(r['tensor']['cpu_ms']):>26s}  {_cell(r['frame']['cpu_ms']):>26s}  "
            f"{_cell(r['speedup_cpu'], '.2f'):>20s}  {_cell(r['speedup_wall'], '.2f'):>20s}  "
            f"{','.join(r['surviving_nodes']) or '-'}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_with_quick(build_parser(), argv, QUICK)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.rounds < 2 or args.queries < 1:
        print("error: --rounds must be >= 2 and --queries >= 1", file=sys.stderr)
        return 2
    archs = [a for a in args.archs.split(",") if a.strip()]
    sizes = _ints(args.sizes, "--sizes")
    w, h = _frame_size(args.frame)
    frame = _camera_frame(w, h)
    rows = [measure(a, s, frame, args.rounds, args.queries) for a in archs for s in sizes]
    out = {
        "host": cpu_identity(),
        "frame": [w, h],
        "rounds": args.rounds,
        "queries_per_round": args.queries,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "frame_input.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(table(rows, (w, h)))
    print(f"\nwrote {args.out / 'frame_input.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
