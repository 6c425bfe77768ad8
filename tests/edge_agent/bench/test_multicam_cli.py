"""edge-bench with several cameras: each camera and the batched whole reported, the CPU split printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.bench.cli import main
from tests.bundles import make_bundle
from tests.edge_agent.media import write_video


def test_two_named_cameras_are_reported_each_and_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_bundle(tmp_path / "ok")
    front = write_video(tmp_path / "front.avi", [("red", 20)])
    rear = write_video(tmp_path / "rear.avi", [("blue", 20)])
    out = tmp_path / "out"
    argv = [str(tmp_path / "ok"), "--mode", "pipeline", "--source", f"front={front}", "--source", f"rear={rear}"]
    rc = main([*argv, "--cpu-budget", "1", "--duration", "0.4", "--warmup", "0.1", "--no-plots", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "cpu split: CPU budget 1: 0 for capture (2 camera threads), 1 ONNX Runtime intra-op thread" in printed
    assert "front" in printed and "rear" in printed and "all (batch 2)" in printed
    doc = json.loads((out / "results.json").read_text())
    pl = doc["results"][0]["pipeline"]
    assert set(pl["cameras"]) == {"front", "rear"} and pl["batch_size"] == 2
    assert all(c["captured"] > 0 and c["inferred"] > 0 and c["dropped"] == 0 for c in pl["cameras"].values())
    assert doc["host"]["cpu_split"]["inference"] == 1 and doc["settings"]["sources"] == [
        f"front={front}",
        f"rear={rear}",
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--source", "a=x.avi", "--source", "a=y.avi"], "used twice"),
        (["--source", "a="], "no source after"),
    ],
)
def test_bad_cameras_exit_2(tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    make_bundle(tmp_path / "ok")
    assert main([str(tmp_path / "ok"), *extra, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
