"""The demo's releases: training runs, optimized bundles, and what each release is.

- 1.0.0: ``edge-train --config training/configs/demo-signs.yaml`` (2-process DDP);
- 1.1.0: ``edge-train --config training/configs/demo-signs-longer.yaml --init-weights
  <1.0.0's best.pt>``: 1.0.0 trained on, for more epochs on twice the images — a
  genuinely better model, which must disagree with 1.0.0 wherever 1.0.0 was wrong;
- 1.2.0: 1.1.0's checkpoint with its classifier rows rotated by one class
  (:func:`demo_media.write_label_shifted_run`): a wrong label order.

Every release is optimized by ``edge-optimize`` calibrating on frames of the
fleet's own camera videos (``--calib-data``); 1.1.0 and 1.2.0 against the
release they replace, fetched from the OTA server through its TUF repository
(``--baseline-release``), so each bundle records how often it should agree with
what the vehicles run. :func:`model_facts` reads back what the bundle says.

This module runs the project's CLIs and reads bundles; it imports no stage package.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from demo_report import ModelFacts
from demo_steps import ROOT, tool
from models.bundle import AgreementExpectation, Manifest, Precision, read_bundle
from models.procs import Processes, StepFailed

TRAIN_CONFIG = ROOT / "training" / "configs" / "demo-signs.yaml"  # 1.0.0
LONGER_CONFIG = ROOT / "training" / "configs" / "demo-signs-longer.yaml"  # 1.1.0, from 1.0.0's weights
TRAIN_TIMEOUT_S = 1800.0  # a stuck run, not a slow one: a loaded host may take three times as long
OPTIMIZE_TIMEOUT_S = 900.0
# a lean optimize for the demo: the fleet's hardware classes only, one calibration method; the
# whole held-out split (500 images) for top-1 and the expected agreement
OPTIMIZE_FLAGS = (
    "--targets",
    "cpu,jetson-orin",
    "--calib-methods",
    "minmax",
    "--eval-samples",
    "500",
    "--bench-seconds",
    "0.5",
    "--bench-queries",
    "20",
)


def train_argv(config: Path, runs_dir: Path, name: str, *, init_weights: Path | None = None) -> list[str]:
    """``edge-train`` with 2 DDP processes into ``runs_dir/name`` (optionally from other weights)."""
    argv = [
        tool("edge-train"),
        "--config",
        str(config),
        "--nproc-per-node",
        "2",
        "--output",
        str(runs_dir),
        "--name",
        name,
        "--no-progress",
    ]
    return argv + (["--init-weights", str(init_weights)] if init_weights else [])


def trained_run(run_dir: Path, output: str, *, log_path: Path) -> Path:
    """Check the run wrote its best checkpoint and print its last epochs; returns ``run_dir``."""
    if not (run_dir / "checkpoints" / "best.json").is_file():
        raise StepFailed(f"edge-train wrote no {run_dir / 'checkpoints' / 'best.json'}", log_path=log_path)
    lines = [x for x in output.replace("\r", "\n").splitlines() if x.strip() and "%|" not in x]
    for line in [x for x in lines if "epoch" in x or "best" in x][-4:]:
        print(f"    {line.split(' INFO ')[-1]}")
    return run_dir


def describe_config(config: Path) -> str:
    """``"4 epochs on 3000 images"``: the size of a training config, for the output and the report."""
    try:
        data = yaml.safe_load(config.read_text()) or {}
        return f"{int(data['epochs'])} epochs on {int(data['train_size'])} images"
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise StepFailed(f"{config} is not a training config with epochs and train_size: {e}") from e


def optimize_argv(
    run_dir: Path,
    bundle: Path,
    *,
    name: str,
    version: str,
    calib_dir: Path,
    calib_samples: int,
    latency_budget_ms: float,
    baseline_release: str | None = None,
    server_url: str | None = None,
    trusted_root: Path | None = None,
) -> list[str]:
    """``edge-optimize RUN_DIR --out BUNDLE ...`` calibrating on ``calib_dir``, optionally against a release."""
    argv = [
        tool("edge-optimize"),
        str(run_dir),
        "--out",
        str(bundle),
        "--name",
        name,
        "--version",
        version,
        *OPTIMIZE_FLAGS,
        "--calib-data",
        str(calib_dir),
        "--calib-samples",
        str(calib_samples),
        "--latency-budget-ms",
        str(latency_budget_ms),
    ]
    if baseline_release is not None:
        if server_url is None or trusted_root is None:
            raise ValueError("a baseline release needs the server URL and its trusted root.json")
        argv += ["--baseline-release", baseline_release, "--server", server_url, "--trusted-root", str(trusted_root)]
    return argv


def optimize(procs: Processes, argv: list[str], *, version: str) -> str:
    """Run one ``edge-optimize``; prints its variant table; returns its output."""
    out = procs.run(f"optimize-{version}", argv, timeout_s=OPTIMIZE_TIMEOUT_S, live=True)
    print("\n".join("    " + line for line in variant_table(out).splitlines()))
    return out


def variant_table(output: str) -> str:
    """The optimizer's variant table and selection lines out of its log."""
    lines = output.replace("\r", "\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| variant")), None)
    if start is None:
        return "(no variant table in the optimizer's output)"
    keep = [line for line in lines[start:] if line.strip() and "%|" not in line]
    return "\n".join(keep[:20])


def _shown_expectation(manifest: Manifest, baseline: str) -> AgreementExpectation | None:
    """The FP32-against-FP32 expectation for ``baseline`` (else its first one)."""
    found = [e for e in manifest.expectations if e.baseline == baseline]
    found.sort(key=lambda e: (e.variant != "onnx-fp32", e.baseline_variant != "onnx-fp32"))
    return found[0] if found else None


def model_facts(bundle: Path, *, source: str, baseline: str | None) -> ModelFacts:
    """What ``bundle``'s manifest says of the release: FP32 top-1 on the held-out split, and the
    agreement it expects with ``baseline`` (``name@version``; None for a first release)."""
    manifest = read_bundle(bundle)
    fp32 = next((v for v in manifest.variants if v.precision is Precision.FP32), None)
    m = fp32.measurement if fp32 is not None else None
    e = _shown_expectation(manifest, baseline) if baseline else None
    own = _shown_expectation(manifest, manifest.release)
    return ModelFacts(
        version=manifest.version,
        source=source,
        top1=m.accuracy if m is not None and m.metric == "top1" else None,
        heldout_frames=(e or own).heldout_frames if (e or own) else None,
        baseline=baseline,
        expected=e.expected if e else None,
        expected_heldout=e.heldout if e else None,
        expected_calib=e.calib if e else None,
        calib_frames=(e or own).calib_frames if (e or own) else 0,
        expectation_pair=f"{e.variant} vs {e.baseline_variant}" if e else None,
        floor=manifest.gates.min_agreement,
    )
