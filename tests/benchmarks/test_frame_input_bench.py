"""A short real run of benchmarks/frame_input.py: both forms measured in every rotated round, its JSON read back.

What is checked is the shape of the run (rounds, rotation, intervals, the prepended nodes found
in ONNX Runtime's optimized graph), never a time or a speedup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_frame_input_benchmark_measures_both_forms_in_rotated_rounds(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = ["--quick", "--sizes", "64", "--rounds", "2", "--queries", "3", "--frame", "320x240", "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "frame_input.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "frame_input.json").read_text())
    assert result["frame"] == [320, 240] and result["rounds"] == 2
    (row,) = result["rows"]
    assert (row["arch"], row["size"]) == ("mobilenet_v3_small", 64)
    assert row["round_order"] == [["tensor", "frame"], ["frame", "tensor"]]
    for form in ("tensor", "frame"):
        assert row[form]["queries"] == 6
        for key in ("wall_ms", "cpu_ms", "preprocess_ms"):
            iv = row[form][key]
            assert iv["low"] <= iv["point"] <= iv["high"] and iv["confidence"] == 0.95
    for key in ("speedup_cpu", "speedup_wall"):
        assert 0 < row[key]["low"] <= row[key]["point"] <= row[key]["high"]
    assert {"Cast", "Mul", "Add", "Transpose", "Gather"} <= set(row["surviving_nodes"])  # RGB, NCHW model
    assert "frame speedup cpu" in proc.stdout


def test_frame_input_benchmark_refuses_bad_options(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "frame_input.py"), "--frame", "big", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0 and "--frame must be WxH like 1280x720, got 'big'" in proc.stderr
    assert not (tmp_path / "frame_input.json").exists()
