"""``edge-optimize``: turn a training checkpoint into a deployable bundle.

Exit codes: 0 bundle written; 2 bad input (missing/non-checkpoint file,
sidecar not matching the arch, non-semver version, unknown target, bad
option, --out not empty); 1 the optimization itself failed (export parity,
quantization, engine build). On any failure ``--out`` is left untouched.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from models.bench import BenchConfig
from models.bundle import BundleError
from optimize.config import DEFAULT_TARGETS, TARGET_ALIASES, CalibMethod, OptimizeConfig
from optimize.errors import InputError, OptimizeError
from optimize.report import markdown_table

__all__ = ["build_parser", "config_from_args", "main"]

log = logging.getLogger("optimize")

EPILOG = """\
targets: hardware classes cpu-x86_64, cpu-aarch64, cuda, jetson-orin, jetson-xavier, jetson-nano,
or the aliases cpu (both CPU classes) and jetson (all three Jetsons). Default: cpu,cuda,jetson.

what it writes into BUNDLE_DIR:
  bundle.json          the manifest (variants, selection per hardware class, gates, provenance)
  model-fp32.onnx      FP32 baseline (always)
  model-int8.onnx      INT8 QDQ for CPUs (when it is faster than FP32 and within the accuracy limit)
  model-int8-qdq.onnx  INT8 Q/DQ for TensorRT (GPU targets; built into an engine on the device)
  model-fp16.onnx      FP16 with float32 I/O (GPU targets)
  *.engine             TensorRT engines for this host's GPU (only where TensorRT is installed)
  report.md/json       accuracy, latency and the selection reasons

example:
  edge-optimize runs/signs --out bundles/signs-1.0.0 --name signs --version 1.0.0 --targets cpu,jetson-orin

exit codes: 0 ok, 1 optimization failed, 2 bad input. Nothing is written to --out on failure.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-optimize",
        description="Export a training checkpoint to ONNX, make INT8/FP16 (and TensorRT) variants, "
        "measure accuracy and latency, pick a variant per hardware class and write a bundle.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a training run directory (uses checkpoints/best.pt, else last.pt), a .pt or its .json sidecar")
    p.add_argument("--out", required=True, type=Path, metavar="BUNDLE_DIR", help="bundle directory to create (must not exist or be empty)")
    p.add_argument("--name", required=True, help="bundle name: lowercase letters, digits, . _ -")
    p.add_argument("--version", required=True, help="semantic version, e.g. 1.2.0")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help=f"comma-separated hardware classes or aliases {sorted(TARGET_ALIASES)} (default: %(default)s)")
    p.add_argument("--calib-samples", type=int, default=128, metavar="N", help="training images for INT8 calibration (default: %(default)s)")
    p.add_argument("--eval-samples", type=int, default=300, metavar="N", help="held-out images for the accuracy gates (default: %(default)s)")
    p.add_argument("--parity-samples", type=int, default=16, metavar="N", help="held-out images for the ONNX vs torch check (default: %(default)s)")
    p.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="P",
                   help="largest accepted accuracy drop vs FP32, in points (default: %(default)s)")
    p.add_argument("--calib-methods", default="minmax,entropy,percentile",
                   help="INT8 calibration methods to try, most accurate kept (default: %(default)s)")
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 variants")
    p.add_argument("--no-fp16", action="store_true", help="skip the FP16 variant")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim simplification")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="ONNX Runtime threads when measuring (default: all cores)")
    p.add_argument("--bench-queries", type=int, default=30, metavar="N", help="minimum timed queries per variant (default: %(default)s)")
    p.add_argument("--bench-seconds", type=float, default=1.0, metavar="S", help="minimum timed seconds per variant (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    p.add_argument("-v", "--verbose", action="store_true", help="log every step")
    return p


def _methods(text: str) -> tuple[CalibMethod, ...]:
    out = []
    for m in (x.strip() for x in text.split(",") if x.strip()):
        try:
            out.append(CalibMethod(m))
        except ValueError:
            raise InputError(f"--calib-methods: unknown method {m!r}; expected some of {[c.value for c in CalibMethod]}") from None
    return tuple(out)


def config_from_args(args: argparse.Namespace) -> OptimizeConfig:
    """Build the :class:`OptimizeConfig` (validated) from parsed arguments."""
    if args.bench_queries < 1 or args.bench_seconds < 0:
        raise InputError("--bench-queries must be >= 1 and --bench-seconds >= 0")
    return OptimizeConfig(
        source=Path(args.source), out=args.out, name=args.name, version=args.version,
        targets=tuple(t for t in args.targets.split(",") if t.strip()),
        calib_samples=args.calib_samples, eval_samples=args.eval_samples, parity_samples=args.parity_samples,
        max_accuracy_drop=args.max_accuracy_drop, calib_methods=_methods(args.calib_methods),
        int8=not args.no_int8, fp16=not args.no_fp16, simplify=not args.no_simplify, threads=args.threads,
        bench=BenchConfig(warmup_queries=5, min_queries=args.bench_queries, min_duration_s=args.bench_seconds,
                          max_duration_s=max(15.0, args.bench_seconds * 3)),
    )


def _summary(result_report: dict[str, object], out: Path, seconds: float) -> str:
    rows = result_report["variants"]
    sel = result_report["selection"]
    lines = [markdown_table(rows, str(result_report["metric"])), ""]  # type: ignore[arg-type]
    for hw, s in sel.items():  # type: ignore[attr-defined]
        lines.append(f"{hw:14s} {' > '.join(s['order'])}")
    lines.append(f"\nbundle written to {out} in {seconds:.1f} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
