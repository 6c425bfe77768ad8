"""edge-bench end to end on real bundles, a real video and ONNX Runtime: outputs, compare, exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edge_agent.bench.cli import main
from edge_agent.bench.hostinfo import describe_host, host_info, parse_nvpmodel, process_rss_mb
from tests.bundles import make_bundle, make_onnx
from tests.edge_agent.media import write_video

FAST = ["--duration", "0.4", "--warmup", "0.1"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    make_bundle(root / "ok", version="1.0.0")
    make_bundle(root / "slow", version="1.1.0", behaviour="slow", slow_ops=6)  # ~4x lighter: test time
    make_bundle(root / "broken", version="1.2.0", behaviour="not-onnx")
    write_video(root / "drive.avi", [("red", 20), ("green", 20), ("blue", 20)])
    return root


def test_compare_two_bundles_on_a_video_writes_table_json_csv_and_plots(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = work / "out-compare"
    rc = main(
        [
            str(work / "ok"),
            str(work / "slow"),
            "--source",
            str(work / "drive.avi"),
            "--out",
            str(out),
            *FAST,
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "host: " in printed and "tiny@1.0.0" in printed and "tiny@1.1.0" in printed and "pipe fps" in printed
    doc = json.loads((out / "results.json").read_text())
    assert doc["host"]["cpu_count"] >= 1 and doc["host"]["versions"]["onnxruntime"]
    first, second = doc["results"]
    assert first["speedup_p50"] == 1.0 and first["speedup_fps"] == 1.0
    # the speedups are the figures measured for the second bundle against the first (baseline) one
    assert second["speedup_p50"] == pytest.approx(first["model_stats"]["p50_ms"] / second["model_stats"]["p50_ms"])
    assert second["speedup_fps"] == pytest.approx(second["pipeline"]["fps"] / first["pipeline"]["fps"])
    assert second["model_stats"]["p99_ms"] >= second["model_stats"]["p50_ms"] > 0
    pl = first["pipeline"]
    # window deltas: a file blocks instead of dropping; frames queued before the window may finish in it
    assert pl["fps"] > 0 and pl["dropped"] == 0 and pl["captured"] > 0 and pl["inferred"] > 0
    assert set(pl["stages_ms"]) == {"decode", "queue", "preprocess", "infer", "postprocess"}
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["model"] for r in rows] == ["tiny@1.0.0", "tiny@1.1.0"]
    for png in ("latency.png", "timeline.png", "stages.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "settings.json").read_text())["mode"] == "both"


def test_p99_threshold_failure_exits_1(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            str(work / "slow"),
            "--mode",
            "model",
            "--fail-if-p99-over",
            "0.001",
            "--no-plots",
            "--out",
            str(work / "out-fail"),
            *FAST,
        ]
    )
    assert rc == 1
    assert "FAIL tiny@1.1.0: p99" in capsys.readouterr().out


def test_pipeline_mode_fps_threshold(work: Path) -> None:
    rc = main(
        [
            str(work / "ok"),
            "--mode",
            "pipeline",
            "--fail-if-fps-under",
            "100000",
            "--no-plots",
            "--out",
            str(work / "out-fps"),
            *FAST,
        ]
    )
    assert rc == 1
    doc = json.loads((work / "out-fps" / "results.json").read_text())
    assert doc["results"][0]["model_stats"] is None and doc["results"][0]["pipeline"]["fps"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{w}/ok", "--source", "{w}/missing.avi"], "cannot open file source"),
        (["{w}/nothing-here"], "not a bundle directory or an .onnx file"),
        (["{w}/broken", "--mode", "model"], "ONNX Runtime cannot load"),
        (["{w}/ok#onnx-int8"], "no variant 'onnx-int8'"),
    ],
)
def test_bad_input_exits_2_with_the_reason(
    work: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    rc = main([a.format(w=work) for a in args] + ["--out", str(work / "out-bad"), *FAST])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "Exit codes: 0 ok, 1" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["x", "--duration", "-1"]) == 2
    assert "must be > 0" in capsys.readouterr().err


def test_bare_onnx_file_runs_and_dynamic_shapes_need_input_shape(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixed = work / "fixed.onnx"
    fixed.write_bytes(make_onnx("ok"))
    assert main([str(fixed), "--out", str(work / "out-onnx"), "--no-plots", *FAST]) == 0
    assert "fixed.onnx" in capsys.readouterr().out

    dynamic = work / "dynamic.onnx"
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"]),
        ],
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, dynamic)
    assert main([str(dynamic), "--mode", "model", "--out", str(work / "out-dyn"), *FAST]) == 2
    assert "pass --input-shape" in capsys.readouterr().err
    assert (
        main(
            [
                str(dynamic),
                "--mode",
                "model",
                "--input-shape",
                "1,3,40,40",
                "--no-plots",
                "--out",
                str(work / "out-dyn"),
                *FAST,
            ]
        )
        == 0
    )


def test_console_script_help_runs() -> None:
    exe = Path(sys.executable).with_name("edge-bench")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--fail-if-p99-over" in out.stdout


def test_host_info_and_nvpmodel_parsing() -> None:
    # nvpmodel -q on a Jetson AGX Orin (JetPack 5/6) prints the mode name, then its id
    assert parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: MAXN\n0\n") == {
        "name": "MAXN",
        "id": 0,
    }
    assert parse_nvpmodel("NV Power Mode: 15W\n2\n") == {"name": "15W", "id": 2}
    assert parse_nvpmodel("nvpmodel: command failed") == {"name": None, "id": None}
    info = host_info()
    assert info["cpu_model"] and info["cpu_count"] >= 1 and info["arch"]
    assert "onnxruntime" in describe_host(info)
    rss = process_rss_mb()
    assert rss is not None and rss > 10
