"""``edge-agent run --source VIDEO``: the update path driving the camera perception path, real server."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from models.bundle import AgreementExpectation, write_bundle
from tests.bundles import LABELS, make_bundle
from tests.edge_agent.media import write_video
from tests.edge_agent.update_harness import check_slots, run_agent
from tests.live_server import live_server


def test_camera_update_then_a_disagreeing_model_is_refused(tmp_path: Path) -> None:
    video = write_video(tmp_path / "road.avi", [("red", 30), ("green", 30), ("blue", 30)])
    data = tmp_path / "truck"
    run = [
        "run",
        "--once",
        "--source",
        str(video),
        "--health-window",
        "1",
        "--bench-queries",
        "5",
        "--bench-duration",
        "0.05",
    ]
    with live_server(tmp_path) as srv:
        out = run_agent(data, "enroll", "--server", srv.url, "--token", srv.credential("cam"), "--group", "cam")
        assert out.returncode == 0, out.stderr
        v1 = make_bundle(tmp_path / "v1", name="cam", version="1.0.0")
        # no floor (min_agreement 0): only the expectation for the release the vehicle runs can refuse it
        v2 = make_bundle(tmp_path / "v2", name="cam", version="2.0.0", behaviour="permuted", min_agreement=0.0)
        write_bundle(
            tmp_path / "v2",
            dataclasses.replace(
                v2,
                expectations=(
                    AgreementExpectation(
                        variant="onnx-fp32",
                        baseline=v1.release,
                        baseline_variant="onnx-fp32",
                        baseline_sha256=v1.variants[0].sha256,
                        heldout=0.97,
                        heldout_frames=500,
                    ),
                ),
            ),
        )
        srv.publish(tmp_path / "v1")
        srv.create_rollout(model="cam", version="1.0.0", group="cam", stages=[100])
        out = run_agent(data, *run)
        assert out.returncode == 0, out.stderr
        assert check_slots(data) == "cam@1.0.0" and "pipeline started" in out.stderr

        srv.publish(tmp_path / "v2")
        rollout = srv.create_rollout(model="cam", version="2.0.0", group="cam", stages=[100])
        out = run_agent(data, *run)
        assert out.returncode == 3, out.stderr
        assert "LOW_AGREEMENT" in out.stderr and "shadow run" in out.stderr
        assert check_slots(data) == "cam@1.0.0"  # never swapped in
        progress = srv.rollout(rollout["id"])
        assert progress["totals"]["failure"] == 1 and "LOW_AGREEMENT" in str(progress["failure_reasons"])
        # the refusal's evidence reaches the server: the sequential test and the classes that flipped
        status, body, _ = srv.api("GET", "/api/v1/devices", token=srv.tokens["viewer"])
        assert status == 200, body
        agreement = body["devices"][0]["gate"]["agreement"]
        assert agreement["decision"] == "refuse" and agreement["judged_against"] == "active"
        assert (agreement["expected"], agreement["baseline"], agreement["p0"]) == (0.97, "cam@1.0.0", 0.92)
        assert agreement["frames"] <= 30 and agreement["confidence"] == 0.99
        rows = agreement["confusion"]
        assert rows and all(r["active"] != r["candidate"] and r["active"] in LABELS for r in rows)
        assert sum(r["count"] for r in rows) == agreement["frames"]  # every frame flipped
