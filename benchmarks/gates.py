"""Gate benchmark: how often the agent's gates decide right, replayed on real model pairs.

Agreement. Small real classifiers are built on ``synthetic-signs`` (numpy +
OpenCV drawing, no torch): a random-feature network written as an ONNX graph
with ``onnx.helper`` (average-pool, Gemm, ReLU, Gemm), its last layer fitted
by ridge regression. A *weak* one (400 training images) plays the release the
fleet runs; a *better* one (6,000 images) the next release; its INT8 (ONNX
Runtime static QDQ quantization) the same model in another precision; a copy
with the output classes rotated the label-permuted model; a copy that never
predicts one of the ten classes the model with one class broken (and one with
two classes swapped, a partly wrong label file). Every model
runs in ONNX Runtime on the same images. The expectation is measured as the
optimizer does (``models.agreement`` on held-out images); the agent's view
is replayed from the per-frame agreement on 3,000 *live* images (another
seed, i.e. frames the optimizer never saw): each replay draws frames at
random from that recording and feeds them, one by one, with the class the
reference predicted on each, to the agent's own sequential test
(``edge_agent.perception.shadow.agreement_test``: the overall SPRT against
``p0 = expected - tolerance`` plus, when the expectation has per-class
figures as the optimizer writes them, one SPRT per class of the reference;
Wilson bounds at the frame limit). A broken candidate claims the expectation
(overall and per class) of the healthy model it replaces. Profiles: the
defaults, the overall test alone at the same frame limit and at the old one
(50), and a tight one. For contrast, the old rule (mean agreement over 50
frames >= the same p0) is replayed on the same draws.

Timing. Three real ONNX models beside an FP32 baseline (one as fast, one
~1.5x slower, one ~2x faster) are timed with ``models.bench.measure_interleaved``
(round-robin, thread CPU time and wall time) on an idle host and with a
``while True: pass`` process keeping one core busy. Windows of rounds are
resampled from each recording and judged by ``models.stats.prefer_faster``
(the lower bound of a 95 % bootstrap interval must clear 1.1x).

Prints a table per gate profile, writes ``bench-out/gates.json``. Targets:
false refusals <= 1 % for consistent candidates, false acceptances <= 1 % for
broken ones and for variants that are not faster.

    .venv/bin/python benchmarks/gates.py [--replays 1000] [--timing-windows 300] [--no-timing]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from edge_agent.perception import GateContext
from edge_agent.perception.shadow import agreement_test
from models.agreement import class_agreement
from models.bench import measure_interleaved
from models.bundle import ClassAgreement, Gates
from models.datasets import DatasetSpec, Split, SyntheticSigns
from models.datasets.synthetic import SIGN_CLASSES
from models.stats import MIN_CLASS_FRAMES, ClassAgreementTest, Verdict, prefer_faster

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.gates")
SIZE, POOL, CLASSES = 48, 4, len(SIGN_CLASSES)


@dataclass(frozen=True)
class Profile:
    gates: Gates
    per_class: bool  # the expectation carries per-class figures (what the optimizer writes)


PROFILES = {  # the gate settings replayed; "default" is what a bundle gets unless its optimizer sets more
    "default": Profile(Gates(latency_budget_ms=100.0), per_class=True),
    "overall only": Profile(Gates(latency_budget_ms=100.0), per_class=False),  # no per-class figures
    "old default": Profile(Gates(latency_budget_ms=100.0, shadow_frames=50), per_class=False),
    "tight": Profile(
        Gates(latency_budget_ms=100.0, agreement_effect=0.08, min_shadow_frames=20, shadow_frames=400), per_class=True
    ),
}


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Net:
    """pool(x) -> relu((. - mu) @ w1 + b1) -> @ w2 + b2: the same maths in numpy and in the ONNX graph."""

    mu: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    def onnx(self, name: str) -> bytes:
        inits = [
            numpy_helper.from_array(a.astype(np.float32), n)
            for a, n in ((self.mu, "MU"), (self.w1, "W1"), (self.b1, "B1"), (self.w2, "W2"), (self.b2, "B2"))
        ]
        nodes = [
            helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Sub", ["flat", "MU"], ["centred"]),
            helper.make_node("Gemm", ["centred", "W1", "B1"], ["hidden0"]),
            helper.make_node("Relu", ["hidden0"], ["hidden"]),
            helper.make_node("Gemm", ["hidden", "W2", "B2"], ["logits"]),
        ]
        graph = helper.make_graph(
            nodes,
            name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", self.w2.shape[1]])],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model.SerializeToString()

    def permuted(self) -> Net:
        return Net(self.mu, self.w1, self.b1, np.roll(self.w2, 1, axis=1), np.roll(self.b2, 1))

    def swapped(self, a: int, b: int) -> Net:
        order = np.arange(self.w2.shape[1])
        order[[a, b]] = order[[b, a]]
        return Net(self.mu, self.w1, self.b1, self.w2[:, order], self.b2[order])

    def without_class(self, k: int) -> Net:
        b2 = self.b2.copy()
        b2[k] = -1e4  # the class never wins: its frames go to the runner-up
        return Net(self.mu, self.w1, self.b1, self.w2, b2)


def _pool(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // POOL, POOL, w // POOL, POOL).mean(axis=(3, 5)).reshape(n, -1)


def train(x: np.ndarray, y: np.ndarray, *, hidden: int, seed: int, ridge: float = 1.0) -> Net:
    """Random ReLU features, the last layer fitted by ridge regression on one-hot targets."""
    rng = np.random.default_rng(seed)
    p = _pool(x)
    mu = p.mean(axis=0)
    w1 = rng.standard_normal((p.shape[1], hidden)) * (3.0 / np.sqrt(p.shape[1]))
    b1 = rng.uniform(-0.5, 0.5, hidden)
    f = np.maximum((p - mu) @ w1 + b1, 0.0)
    t = np.eye(CLASSES)[y]
    w2 = np.linalg.solve(f.T @ f + ridge * np.eye(hidden), f.T @ (t - t.mean(axis=0)))
    b2 = t.mean(axis=0) - f.mean(axis=0) @ w2
    return Net(mu, w1, b1, w2, b2)


def images(seed: int, split: Split, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic-signs images as NCHW RGB floats in [0, 1], and their labels."""
    spec = DatasetSpec(seed=seed, image_size=SIZE, train_size=max(n, 1), val_size=max(n, 1))
    ds = SyntheticSigns(spec, split)
    samples = [ds[i] for i in range(n)]
    x = np.stack([s.image[..., ::-1].transpose(2, 0, 1) for s in samples]).astype(np.float32) / 255.0
    return x, np.array([s.label for s in samples], dtype=np.int64)


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, x: np.ndarray) -> None:
        self._batches = iter([{"input": x[i : i + 32]} for i in range(0, len(x), 32)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize(fp32: Path, out: Path, calib: np.ndarray) -> Path:
    """Static INT8 (QDQ, per-tensor, MinMax) calibrated on ``calib``."""
    quantize_static(
        str(fp32),
        str(out),
        _Reader(calib),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def top1(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return np.concatenate([sess.run(None, {"input": x[i : i + 256]})[0].argmax(axis=1) for i in range(0, len(x), 256)])


# ----------------------------------------------------------------------------- agreement cases


@dataclass(frozen=True)
class Recording:
    """Each model's top-1 on the held-out and on the live images."""

    held: dict[str, np.ndarray]
    live: dict[str, np.ndarray]
    accuracy: dict[str, float]  # top-1 on the live images


@dataclass(frozen=True)
class Case:
    name: str
    consistent: bool  # True: should pass; False: should be refused
    expected: float  # what the candidate claims (measured on held-out images for its healthy model)
    per_class: tuple[ClassAgreement, ...]  # the same, per class of the reference it was measured against
    live: np.ndarray  # per-frame agreement with the reference on the live images
    reference: np.ndarray  # the reference's class on each live image
    note: str


def _agreement(cand: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.array([class_agreement(int(c), int(r)) for c, r in zip(cand, ref, strict=True)])


def _per_class(agree: np.ndarray, ref: np.ndarray) -> tuple[ClassAgreement, ...]:
    """Mean agreement on the frames the reference saw as each class, as the optimizer writes it."""
    return tuple(
        ClassAgreement(SIGN_CLASSES[k], round(float(agree[ref == k].mean()), 4), int(np.sum(ref == k)))
        for k in range(CLASSES)
        if np.sum(ref == k) >= MIN_CLASS_FRAMES
    )


def record_models(work: Path, *, live_frames: int) -> Recording:
    """Train, export, quantize and run the models on the held-out and the live images."""
    t0 = time.monotonic()
    x_train, y_train = images(0, Split.TRAIN, 6000)
    x_held, _ = images(0, Split.VAL, 1000)
    x_live, y_live = images(1, Split.VAL, live_frames)  # another seed: frames the optimizer never saw
    log.info("drew %d images in %.0f s", len(x_train) + len(x_held) + len(x_live), time.monotonic() - t0)
    weak = train(x_train[:400], y_train[:400], hidden=256, seed=1)
    better = train(x_train, y_train, hidden=1024, seed=2)
    nets = {
        "weak": weak,
        "better": better,
        "permuted": better.permuted(),
        "one-class-dead": better.without_class(3),
        "two-swapped": better.swapped(0, 3),
    }
    paths = {}
    for name, net in nets.items():
        paths[name] = work / f"{name}.onnx"
        paths[name].write_bytes(net.onnx(name))
    paths["better-int8"] = quantize(paths["better"], work / "better-int8.onnx", x_train[:512])
    held = {k: top1(session(p), x_held) for k, p in paths.items()}
    live = {k: top1(session(p), x_live) for k, p in paths.items()}
    return Recording(held, live, {k: float(np.mean(live[k] == y_live)) for k in live})


def build_cases(rec: Recording) -> list[Case]:
    """The model pairs replayed: what each candidate claims, and what it does on the live images."""
    held, live = rec.held, rec.live

    def case(name: str, cand: str, ref: str, claims: tuple[str, str], consistent: bool, note: str) -> Case:
        claimed = _agreement(held[claims[0]], held[claims[1]])
        return Case(
            name,
            consistent,
            float(np.mean(claimed)),
            _per_class(claimed, held[claims[1]]),
            _agreement(live[cand], live[ref]),
            live[ref],
            note,
        )

    return [
        case(
            "same model, INT8",
            "better-int8",
            "better",
            ("better-int8", "better"),
            True,
            "active = its FP32 (a re-release of the same checkpoint)",
        ),
        case("better model", "better", "weak", ("better", "weak"), True, "active = the weak model it replaces"),
        case(
            "label-permuted",
            "permuted",
            "better",
            ("better-int8", "better"),
            False,
            "claims the INT8's expectation; active = the FP32",
        ),
        case(
            "label-permuted vs weak",
            "permuted",
            "weak",
            ("better", "weak"),
            False,
            "claims the better model's expectation; active = the weak model",
        ),
        case(
            "one class dead",
            "one-class-dead",
            "better",
            ("better-int8", "better"),
            False,
            "class 3 of 10 never predicted; claims the INT8's expectation",
        ),
        case(
            "one class dead vs weak",
            "one-class-dead",
            "weak",
            ("better", "weak"),
            False,
            "claims the better model's expectation; active = the weak model",
        ),
        case(
            "two classes swapped",
            "two-swapped",
            "better",
            ("better-int8", "better"),
            False,
            "classes 0 and 3 swapped in the output; claims the INT8's expectation",
        ),
    ]


def replay(case: Case, profile: Profile, *, replays: int, rng: np.random.Generator) -> dict[str, Any]:
    """Feed ``replays`` random draws of the live recording to the agent's sequential test."""
    gates = profile.gates
    context = GateContext(
        expected=case.expected, baseline="bench@1.0.0", per_class=case.per_class if profile.per_class else ()
    )
    verdicts, frames, early, old_refused, by_class = [], [], 0, 0, 0
    for _ in range(replays):
        idx = rng.integers(0, len(case.live), size=gates.shadow_frames)
        test = agreement_test(gates, context)
        for x, k in zip(case.live[idx], case.reference[idx], strict=True):
            verdict = (
                test.add(float(x), SIGN_CLASSES[k]) if isinstance(test, ClassAgreementTest) else test.add(float(x))
            )
            if verdict is not Verdict.CONTINUE:
                break
        verdicts.append(test.verdict)
        frames.append(test.frames)
        early += test.frames < gates.shadow_frames
        by_class += (
            isinstance(test, ClassAgreementTest) and test.verdict is Verdict.REFUSE and test.decided_by is not None
        )
        old_refused += float(np.mean(case.live[idx[:50]])) < test.p0  # the old rule: a fixed threshold, 50 frames
    refused = sum(v is Verdict.REFUSE for v in verdicts) / replays
    wrong = refused if case.consistent else 1.0 - refused
    probe = agreement_test(gates, context)
    return {
        "case": case.name,
        "consistent": case.consistent,
        "note": case.note,
        "expected": round(case.expected, 4),
        "live_agreement": round(float(case.live.mean()), 4),
        "p0": round(probe.p0, 4),
        "classes_tested": len(probe.classes) if isinstance(probe, ClassAgreementTest) else 0,
        "replays": replays,
        "pass_rate": round(1.0 - refused, 4),
        "refuse_rate": round(refused, 4),
        "refused_by_class_test": round(by_class / replays, 4),
        "decided_early": round(early / replays, 4),
        "frames_median": float(np.median(frames)),
        "frames_p95": float(np.percentile(frames, 95)),
        "false_refusal_rate": round(wrong, 4) if case.consistent else None,
        "false_acceptance_rate": round(wrong, 4) if not case.consistent else None,
        "old_rule_wrong_rate": round(old_refused / replays if case.consistent else 1.0 - old_refused / replays, 4),
    }


# ----------------------------------------------------------------------------- timing


def timing_models(work: Path) -> dict[str, Path]:
    """An FP32 baseline and three variants: as fast (the same graph), ~1.5x slower, ~2x faster."""
    x = np.random.default_rng(5).uniform(0, 1, (64, 3, SIZE, SIZE)).astype(np.float32)
    y = np.arange(64) % CLASSES
    out = {}
    for name, hidden in (("fp32", 2048), ("as-fast", 2048), ("slower", 3072), ("faster", 1024)):
        net = train(x, y, hidden=hidden, seed=7)
        out[name] = work / f"timing-{name}.onnx"
        out[name].write_bytes(net.onnx(f"timing-{name}"))
    return out


@contextlib.contextmanager
def busy_core() -> Iterator[int]:
    """Another process spinning on one core for as long as the block runs."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(10)


def record_timings(paths: dict[str, Path], *, duration_s: float) -> dict[str, dict[str, list[float]]]:
    sessions = {k: session(p) for k, p in paths.items()}
    frame = np.random.default_rng(6).uniform(0, 1, (1, 3, SIZE, SIZE)).astype(np.float32)
    fns: dict[str, Callable[[], object]] = {k: (lambda s=s: s.run(None, {"input": frame})) for k, s in sessions.items()}
    got = measure_interleaved(
        fns, warmup_queries=20, min_rounds=500, min_duration_s=duration_s, max_duration_s=duration_s * 4
    )
    return {k: {"cpu": list(v.cpu_ms), "wall": list(v.wall_ms)} for k, v in got.items()}


def resample_preference(
    rec: dict[str, dict[str, list[float]]],
    candidate: str,
    *,
    metric: str,
    window: int,
    windows: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Judge ``windows`` random windows of ``window`` consecutive rounds with the interval rule."""
    base, cand = np.asarray(rec["fp32"][metric]), np.asarray(rec[candidate][metric])
    starts = rng.integers(0, len(base) - window, size=windows)
    verdicts = [
        prefer_faster(
            "fp32", base[s : s + window], candidate, cand[s : s + window], min_speedup=1.1, metric=metric, seed=int(s)
        )
        for s in starts
    ]
    lows = [v.interval.low for v in verdicts]
    return {
        "candidate": candidate,
        "metric": metric,
        "window_rounds": window,
        "windows": windows,
        "true_speedup": round(float(np.median(base) / np.median(cand)), 3),
        "preferred_rate": round(sum(v.preferred for v in verdicts) / windows, 4),
        "lower_bound_median": round(float(np.median(lows)), 3),
    }


def timing_cases(work: Path, *, duration_s: float, window: int, windows: int, seed: int) -> list[dict[str, Any]]:
    paths = timing_models(work)
    rows = []
    for host in ("idle", "one core busy"):
        with busy_core() if host != "idle" else contextlib.nullcontext():
            rec = record_timings(paths, duration_s=duration_s)
        for candidate in ("as-fast", "slower", "faster"):
            for metric in ("cpu", "wall"):
                row = resample_preference(
                    rec, candidate, metric=metric, window=window, windows=windows, rng=np.random.default_rng(seed)
                )
                should = candidate == "faster"
                row.update(
                    host=host,
                    rounds=len(rec["fp32"]["cpu"]),
                    should_prefer=should,
                    wrong_rate=round(1.0 - row["preferred_rate"] if should else row["preferred_rate"], 4),
                )
                rows.append(row)
    return rows


# ----------------------------------------------------------------------------- report


def print_tables(results: dict[str, Any]) -> None:
    print(f"\ntop-1 on the live images: {results['accuracy']}")
    for profile, rows in results["agreement"].items():
        g = results["profiles"][profile]
        tests = (
            f"overall + per-class tests (class effect {g['class_agreement_effect']})"
            if g["per_class"]
            else "overall test only"
        )
        print(
            f"\nagreement gate, profile {profile!r}: {tests}, effect {g['agreement_effect']}, "
            f"alpha {g['false_refusal_rate']}, beta {g['false_acceptance_rate']}, "
            f"frames {g['min_shadow_frames']}-{g['shadow_frames']}; {rows[0]['replays']} replays each"
        )
        print(
            f"{'case':<24}{'expect':>7}{'live':>7}{'p0':>7}{'cls':>4}{'pass':>8}{'refuse':>8}{'by cls':>7}"
            f"{'early':>7}{'frames p50':>11}{'p95':>6}{'false ref':>10}{'false acc':>10}{'old rule':>9}"
        )
        for r in rows:
            fr = "-" if r["false_refusal_rate"] is None else f"{r['false_refusal_rate']:.1%}"
            fa = "-" if r["false_acceptance_rate"] is None else f"{r['false_acceptance_rate']:.1%}"
            print(
                f"{r['case']:<24}{r['expected']:>7.3f}{r['live_agreement']:>7.3f}{r['p0']:>7.3f}"
                f"{r['classes_tested']:>4}{r['pass_rate']:>8.1%}{r['refuse_rate']:>8.1%}"
                f"{r['refused_by_class_test']:>7.1%}{r['decided_early']:>7.0%}"
                f"{r['frames_median']:>11.0f}{r['frames_p95']:>6.0f}{fr:>10}{fa:>10}{r['old_rule_wrong_rate']:>9.1%}"
            )
    if not results["timing"]:
        return
    print("\nvariant choice (prefer only when the 95 % lower bound of the speedup clears 1.1x)")
    print(f"{'host':<15}{'candidate':<10}{'metric':<7}{'speedup':>8}{'low p50':>8}{'preferred':>10}{'wrong':>7}")
    for r in results["timing"]:
        print(
            f"{r['host']:<15}{r['candidate']:<10}{r['metric']:<7}{r['true_speedup']:>8.2f}"
            f"{r['lower_bound_median']:>8.2f}{r['preferred_rate']:>10.1%}{r['wrong_rate']:>7.1%}"
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--replays", type=int, default=1000, help="replays of each agreement case")
    p.add_argument("--live-frames", type=int, default=3000, help="live images recorded per model pair")
    p.add_argument("--timing-duration", type=float, default=8.0, help="seconds of interleaved timing per host state")
    p.add_argument("--timing-window", type=int, default=200, help="rounds per resampled timing window")
    p.add_argument("--timing-windows", type=int, default=300, help="resampled windows per timing case")
    p.add_argument("--no-timing", action="store_true", help="replay the agreement cases only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench-out", help="output directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = args.out / "gates"
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    rec = record_models(work, live_frames=args.live_frames)
    cases = build_cases(rec)
    agreement = {name: [replay(c, p, replays=args.replays, rng=rng) for c in cases] for name, p in PROFILES.items()}
    timing = (
        []
        if args.no_timing
        else timing_cases(
            work,
            duration_s=args.timing_duration,
            window=args.timing_window,
            windows=args.timing_windows,
            seed=args.seed,
        )
    )
    results = {
        "accuracy": {k: round(v, 3) for k, v in rec.accuracy.items()},
        "profiles": {
            k: {
                "per_class": p.per_class,
                **{
                    f: getattr(p.gates, f)
                    for f in (
                        "agreement_tolerance",
                        "agreement_effect",
                        "class_agreement_effect",
                        "false_refusal_rate",
                        "false_acceptance_rate",
                        "min_shadow_frames",
                        "shadow_frames",
                    )
                },
            }
            for k, p in PROFILES.items()
        },
        "agreement": agreement,
        "timing": timing,
    }
    print_tables(results)
    (args.out / "gates.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out / 'gates.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
