"""edge-optimize end to end: a real checkpoint in, a valid bundle out; bad input leaves nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.bundle import read_bundle
from models.datasets import DatasetSpec, open_dataset
from models.hardware import HARDWARE_CLASSES
from models.runtime import Model
from optimize import pipeline
from optimize.__main__ import main
from optimize.errors import ParityError
from tests.optimize.checkpoints import FAST_OPTIMIZE

FAST = FAST_OPTIMIZE


def _args(run: Path, out: Path, *extra: str) -> list[str]:
    return [str(run), "--out", str(out), "--name", "signs", "--version", "1.0.0", *FAST, *extra]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".work-" in p.name)


@pytest.fixture(scope="module")
def bundle(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "signs-1.0.0"
    assert main(_args(trained_run, out)) == 0
    return out


def test_bundle_is_valid_and_every_variant_predicts(bundle: Path, trained_run: Path) -> None:
    m = read_bundle(bundle)  # verifies every file's size and sha256
    assert m.name == "signs" and m.version == "1.0.0" and m.arch == "mobilenet_v3_small"
    assert set(m.selection) == set(HARDWARE_CLASSES)
    ids = {v.id for v in m.variants}
    assert {"onnx-fp32", "onnx-int8-qdq", "onnx-fp16"} <= ids
    assert m.variant("onnx-int8-qdq").requires.build_on_device
    assert m.selection["jetson-nano"].order[-1] == "onnx-fp32"
    for hw, entry in m.selection.items():
        assert entry.order[-1] == "onnx-fp32" and entry.reason, hw
    assert m.gates.latency_budget_ms > 0 and 0.5 <= m.gates.min_agreement <= 0.9
    side = json.loads((trained_run / "checkpoints" / "best.json").read_text())
    assert m.provenance.checkpoint_sha256 == side["checkpoint_sha256"]
    assert m.input.shape == (None, 3, 32, 32)
    report = json.loads((bundle / "report.json").read_text())
    assert {r["variant"] for r in report["variants"]} >= ids
    assert "| variant |" in (bundle / "report.md").read_text()
    fp32 = m.variant("onnx-fp32").measurement
    assert fp32 is not None and fp32.metric == "top1" and fp32.accuracy_delta == 0.0
    assert fp32.latency_p50_ms and fp32.latency_p50_ms > 0
    ds = open_dataset(DatasetSpec.from_dict(side["dataset"]), "val")
    for v in m.variants:
        with Model(bundle, v.id) as model:
            pred = model.predict(ds[0].image)
            assert pred.top_k is not None and 0 <= pred.top_k[0][0] < len(m.labels)
            assert not pred.has_nan()


def test_same_inputs_give_byte_identical_models_and_manifest(bundle: Path, trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert main(_args(trained_run, out)) == 0
    for f in sorted(bundle.glob("*.onnx")):
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name

    def stable(d: Path) -> dict[str, object]:
        data = json.loads((d / "bundle.json").read_text())
        data["provenance"]["created_at"] = None
        for v in data["variants"]:
            v["measurement"] = None  # latency is measured, so it varies
        data["gates"]["latency_budget_ms"] = None
        data["selection"] = {k: v for k, v in data["selection"].items() if not k.startswith("cpu")}
        return data

    assert stable(out) == stable(bundle)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--version": "1.0"}, "--version must be a semantic version"),
        ({"--targets": "cpu,tpu"}, "unknown target 'tpu'"),
        ({"--name": "Bad Name"}, "--name must match"),
        ({"--calib-samples": "0"}, "--calib-samples must be a positive integer"),
        ({"--calib-methods": "magic"}, "unknown method 'magic'"),
        ({"--latency-budget-ms": "0"}, "--latency-budget-ms must be within (0, 60000]"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(
    trained_run: Path, tmp_path: Path, change: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args(trained_run, tmp_path / "out")
    for k, v in change.items():
        if k in args:
            args[args.index(k) + 1] = v
        else:
            args += [k, v]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_bad_sources_exit_2(tmp_path: Path, trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "model.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(1000))
    side = json.loads((trained_run / "checkpoints" / "best.json").read_text())
    side["checkpoint_sha256"] = None
    (tmp_path / "model.json").write_text(json.dumps(side))
    for src, message in [(tmp_path / "missing", "does not exist"), (junk, "is not a readable checkpoint")]:
        assert main(_args(src, tmp_path / "out")) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_existing_out_is_never_overwritten(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(_args(trained_run, out)) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_failure_midway_exits_1_and_leaves_nothing(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(report: object, what: str) -> None:
        raise ParityError(f"{what} does not match torch on 16 samples: logits: max |onnx - torch| 0.7")

    monkeypatch.setattr(pipeline, "require_parity", fail)
    assert main(_args(trained_run, tmp_path / "out")) == 1
    assert "does not match torch" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_help_explains_and_the_entry_point_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "optimize", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0
    for word in (
        "RUN_DIR_OR_CHECKPOINT",
        "--max-accuracy-drop",
        "--targets",
        "exit codes",
        "model-int8-qdq.onnx",
        "--baseline BUNDLE_DIR",
        "--baseline-release NAME@VERSION",
        "--server URL",
        "--trusted-root ROOT_JSON",
        "--calib-data DIR",
        "--min-speedup",
        "lower bound",
        "ImageFolder root",
    ):
        assert word in out.stdout
