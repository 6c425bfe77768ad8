"""edge-optimize --baseline-release against a live OTA server: fetched and verified through its TUF repository."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.bundle import read_bundle
from optimize.__main__ import main
from tests.live_server import LiveServer, live_server
from tests.optimize.checkpoints import FAST_OPTIMIZE
from tests.optimize.frames import write_frames


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, baseline_bundle: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("ota")) as srv:
        srv.publish(baseline_bundle)
        yield srv


def _args(run: Path, out: Path, srv: LiveServer, release: str, *extra: str, root: Path | None = None) -> list[str]:
    return [
        str(run),
        "--out",
        str(out),
        "--name",
        "signs",
        "--version",
        "1.1.0",
        "--targets",
        "cpu",
        *FAST_OPTIMIZE,
        "--baseline-release",
        release,
        "--server",
        srv.url,
        "--trusted-root",
        str(root or srv.root_json),
        *extra,
    ]


def _nothing_left(parent: Path, out: Path) -> bool:
    return not out.exists() and not [p for p in parent.iterdir() if ".partial-" in p.name or ".work-" in p.name]


def test_expectations_against_a_published_release(
    server: LiveServer, trained_run: Path, baseline_bundle: Path, tmp_path: Path
) -> None:
    frames = write_frames(trained_run, tmp_path / "frames", n=10, layout="imagefolder")
    out = tmp_path / "signs-1.1.0"
    assert main(_args(trained_run, out, server, "signs@1.0.0", "--calib-data", str(frames))) == 0
    m, base = read_bundle(out), read_bundle(baseline_bundle)
    against = {
        (e.variant, e.baseline_variant, e.baseline_sha256) for e in m.expectations if e.baseline == "signs@1.0.0"
    }
    served = dict.fromkeys([base.selection["cpu-x86_64"].order[0], "onnx-fp32"])
    assert against == {(v.id, b, base.variant(b).sha256) for v in m.variants for b in served}
    old = m.expectation("onnx-fp32", baseline="signs@1.0.0", baseline_sha256=base.variant("onnx-fp32").sha256)
    assert old is not None and old.heldout == 1.0 and old.calib_frames == 10
    assert {e.baseline for e in m.expectations} == {"signs@1.0.0", "signs@1.1.0"}
    # the fetched copy lived in the scratch directory only
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["bundle.json", "report.json", "report.md", *(v.file for v in m.variants)]
    )


def test_unpublished_release_and_untrusted_root_exit_2(
    server: LiveServer, trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(_args(trained_run, out, server, "signs@0.9.0")) == 2
    assert "signs/0.9.0/bundle.json is not a target of the server's TUF repository" in capsys.readouterr().err
    assert _nothing_left(tmp_path, out)

    root = json.loads(server.root_json.read_text())
    root["signed"]["expires"] = "2099-01-01T00:00:00Z"  # the signature no longer covers it
    forged = tmp_path / "root.json"
    forged.write_text(json.dumps(root))
    assert main(_args(trained_run, out, server, "signs@1.0.0", root=forged)) == 2
    assert "--trusted-root" in capsys.readouterr().err
    assert _nothing_left(tmp_path, out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--baseline-release", "signs"], "must be NAME@VERSION"),
        (["--baseline-release", "signs@1.0.0"], "needs --server and --trusted-root"),
        (["--server", "http://127.0.0.1:1"], "only go with --baseline-release"),
    ],
)
def test_release_options_are_checked_first(
    argv: list[str], message: str, trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert (
        main([str(trained_run), "--out", str(out), "--name", "signs", "--version", "1.1.0", *FAST_OPTIMIZE, *argv]) == 2
    )
    assert message in capsys.readouterr().err
    assert _nothing_left(tmp_path, out)
