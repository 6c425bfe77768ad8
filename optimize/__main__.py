"""``edge-optimize``: turn a training checkpoint into a deployable bundle.

Exit codes: 0 bundle written; 2 bad input (missing/non-checkpoint file,
sidecar not matching the arch, non-semver version, unknown target, bad
option, --out not empty, a baseline that is not an earlier release of the
same model or does not verify, an unreadable --calib-data); 1 the
optimization itself failed (export parity, quantization, engine build). On
any failure ``--out`` is left untouched.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from models.bench import BenchConfig
from models.bundle import BundleError
from optimize.config import DEFAULT_TARGETS, TARGET_ALIASES, CalibMethod, InputFormChoice, OptimizeConfig
from optimize.errors import InputError, OptimizeError
from optimize.report import markdown_table, selection_lines

__all__ = ["build_parser", "config_from_args", "main"]

log = logging.getLogger("optimize")

EPILOG = """\
targets: hardware classes cpu-x86_64, cpu-aarch64, cuda, jetson-orin, jetson-xavier, jetson-nano,
or the aliases cpu (both CPU classes) and jetson (all three Jetsons). Default: cpu,cuda,jetson.

what it writes into BUNDLE_DIR:
  bundle.json          the manifest (variants, selection per hardware class, gates, provenance)
  model-fp32.onnx      FP32 baseline (always)
  model-int8.onnx      INT8 QDQ for CPUs (selected where its speedup interval clears --min-speedup)
  model-int8-qdq.onnx  INT8 Q/DQ for TensorRT (GPU targets; built into an engine on the device)
  model-fp16.onnx      FP16 with float32 I/O (GPU targets)
  *.engine             TensorRT engines for this host's GPU (only where TensorRT is installed)
  report.md/json       accuracy, latency, speedup intervals, the selection reasons, the expectations

variant choice: every ONNX variant is timed interleaved on one thread; a CPU class prefers a variant
over FP32 only when the lower bound of the 95 % bootstrap interval of its speedup in thread CPU time
is at least --min-speedup. The interval and the decision are written into bundle.json.

agreement expectations: each variant's mean per-frame agreement (top-1, box F1@0.5, pixels) with
  - the bundle's own onnx-fp32 (always), and
  - each variant a baseline serves (its first choice for each --targets class, plus its onnx-fp32),
measured on the held-out split and on the calibration frames. A device judges the candidate
against the expectation for the release it runs, with a sequential test.
  --baseline BUNDLE_DIR       a local bundle directory of the release this one replaces (repeatable)
  --baseline-release N@V      a published release, fetched from --server through its TUF repository
                              and verified against --trusted-root (root.json from `ota-server init`)
A baseline must be the same model: same --name, task, input size, layout, colour order and
normalisation, same labels in the same order; anything else exits 2.

calibration: --calib-data DIR takes an ImageFolder root (DIR/<class>/*.jpg, or DIR/train/<class>/)
or a flat directory of frames (DIR/*.jpg|png, e.g. sampled from the fleet's cameras) instead of
the training split; the expectations' calibration figures are measured on those frames.

examples:
  edge-optimize runs/signs --out bundles/signs-1.0.0 --name signs --version 1.0.0 --targets cpu,jetson-orin
  edge-optimize runs/signs-v2 --out bundles/signs-1.1.0 --name signs --version 1.1.0 \\
      --baseline bundles/signs-1.0.0 --calib-data frames/
  edge-optimize runs/signs-v2 --out bundles/signs-1.1.0 --name signs --version 1.1.0 \\
      --baseline-release signs@1.0.0 --server https://ota.example --trusted-root provisioning/root.json

exit codes: 0 ok, 1 optimization failed, 2 bad input. Nothing is written to --out on failure.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-optimize",
        description="Export a training checkpoint to ONNX, make INT8/FP16 (and TensorRT) variants, "
        "measure accuracy and latency, pick a variant per hardware class and write a bundle.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        metavar="RUN_DIR_OR_CHECKPOINT",
        help="a training run directory (uses checkpoints/best.pt, else last.pt), a .pt or its .json sidecar",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="BUNDLE_DIR",
        help="bundle directory to create (must not exist or be empty)",
    )
    p.add_argument("--name", required=True, help="bundle name: lowercase letters, digits, . _ -")
    p.add_argument("--version", required=True, help="semantic version, e.g. 1.2.0")
    p.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated hardware classes or aliases {sorted(TARGET_ALIASES)} (default: %(default)s)",
    )
    p.add_argument(
        "--calib-samples",
        type=int,
        default=128,
        metavar="N",
        help="images for INT8 calibration and the calibration-frame agreement (default: %(default)s)",
    )
    p.add_argument(
        "--calib-data",
        type=Path,
        default=None,
        metavar="DIR",
        help="calibrate on these frames instead of the train split: an ImageFolder root or a flat "
        "directory of jpg/png frames",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        metavar="BUNDLE_DIR",
        help="bundle of the release this one replaces: record the expected agreement with the "
        "variants it serves (repeatable)",
    )
    p.add_argument(
        "--baseline-release",
        default=None,
        metavar="NAME@VERSION",
        help="a published release as baseline, fetched through the TUF repository of --server",
    )
    p.add_argument("--server", default=None, metavar="URL", help="OTA server for --baseline-release")
    p.add_argument(
        "--trusted-root",
        type=Path,
        default=None,
        metavar="ROOT_JSON",
        help="the image repository's pinned root.json, for --baseline-release",
    )
    p.add_argument(
        "--min-speedup",
        type=float,
        default=1.1,
        metavar="X",
        help="a variant beats FP32 only when its speedup's lower 95%% bound is >= X (default: %(default)s)",
    )
    p.add_argument(
        "--latency-budget-ms",
        type=float,
        default=None,
        metavar="MS",
        help="the bundle's p95 latency budget on the device; rollouts may only tighten it "
        "(default: 4x the FP32 p95 measured here, at least 5 ms)",
    )
    p.add_argument(
        "--eval-samples",
        type=int,
        default=300,
        metavar="N",
        help="held-out images for the accuracy gates (default: %(default)s)",
    )
    p.add_argument(
        "--parity-samples",
        type=int,
        default=16,
        metavar="N",
        help="held-out images for the ONNX vs torch check (default: %(default)s)",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=1.0,
        metavar="P",
        help="largest accepted accuracy drop vs FP32, in points (default: %(default)s)",
    )
    p.add_argument(
        "--calib-methods",
        default="minmax,entropy,percentile",
        help="INT8 calibration methods to try, most accurate kept (default: %(default)s)",
    )
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 variants")
    p.add_argument("--no-fp16", action="store_true", help="skip the FP16 variant")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim simplification")
    p.add_argument(
        "--input-form",
        choices=[c.value for c in InputFormChoice],
        default=InputFormChoice.BOTH.value,
        help="both: each variant also as a frame-form twin (ID-frame) taking the resized uint8 BGR frame, "
        "preprocessing in the graph; tensor: only variants taking the preprocessed tensor, for agents "
        "older than the manifest's input_form (default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="ONNX Runtime threads for the accuracy runs (default: all cores); timing uses one",
    )
    p.add_argument(
        "--bench-queries",
        type=int,
        default=30,
        metavar="N",
        help="minimum interleaved timing rounds, one query of each variant per round (default: %(default)s)",
    )
    p.add_argument(
        "--bench-seconds",
        type=float,
        default=1.0,
        metavar="S",
        help="minimum timed seconds per variant (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    p.add_argument("-v", "--verbose", action="store_true", help="log every step")
    return p


def _methods(text: str) -> tuple[CalibMethod, ...]:
    out = []
    for m in (x.strip() for x in text.split(",") if x.strip()):
        try:
            out.append(CalibMethod(m))
        except ValueError:
            raise InputError(
                f"--calib-methods: unknown method {m!r}; expected some of {[c.value for c in CalibMethod]}"
            ) from None
    return tuple(out)


def config_from_args(args: argparse.Namespace) -> OptimizeConfig:
    """Build the :class:`OptimizeConfig` (validated) from parsed arguments."""
    if args.bench_queries < 1 or args.bench_seconds < 0:
        raise InputError("--bench-queries must be >= 1 and --bench-seconds >= 0")
    return OptimizeConfig(
        source=Path(args.source),
        out=args.out,
        name=args.name,
        version=args.version,
        targets=tuple(t for t in args.targets.split(",") if t.strip()),
        calib_samples=args.calib_samples,
        eval_samples=args.eval_samples,
        parity_samples=args.parity_samples,
        max_accuracy_drop=args.max_accuracy_drop,
        calib_methods=_methods(args.calib_methods),
        int8=not args.no_int8,
        fp16=not args.no_fp16,
        simplify=not args.no_simplify,
        input_form=InputFormChoice(args.input_form),
        threads=args.threads,
        bench=BenchConfig(
            warmup_queries=5,
            min_queries=args.bench_queries,
            min_duration_s=args.bench_seconds,
            max_duration_s=max(15.0, args.bench_seconds * 3),
        ),
        min_speedup=args.min_speedup,
        latency_budget_ms=args.latency_budget_ms,
        baselines=tuple(args.baseline),
        baseline_release=args.baseline_release,
        server=args.server,
        trusted_root=args.trusted_root,
        calib_data=args.calib_data,
    )


def _summary(result_report: dict[str, object], out: Path, seconds: float) -> str:
    rows = result_report["variants"]
    lines = [markdown_table(rows, str(result_report["metric"])), ""]  # type: ignore[arg-type]
    lines += selection_lines(result_report["selection"])  # type: ignore[arg-type]
    expected = result_report.get("expectations") or []
    baselines = sorted({e["baseline"] for e in expected})  # type: ignore[attr-defined]
    lines.append(f"\nagreement expectations: {len(expected)} against {', '.join(baselines) or 'none'}")  # type: ignore[arg-type]
    lines.append(f"\nbundle written to {out} in {seconds:.1f} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from optimize.pipeline import optimize

    try:
        cfg = config_from_args(args)
        result = optimize(cfg, progress=not args.quiet)
    except InputError as e:
        print(f"edge-optimize: error: {e}", file=sys.stderr)
        return 2
    except (OptimizeError, BundleError) as e:
        print(f"edge-optimize: failed: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(_summary(result.report, result.out, result.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
