"""``edge-agent run --source VIDEO``: the update path driving the camera perception path, real server."""

from __future__ import annotations

from pathlib import Path

from tests.bundles import make_bundle
from tests.edge_agent.media import write_video
from tests.edge_agent.update_harness import check_slots, run_agent
from tests.live_server import live_server


def test_camera_update_then_a_disagreeing_model_is_refused(tmp_path: Path) -> None:
    video = write_video(tmp_path / "road.avi", [("red", 30), ("green", 30), ("blue", 30)])
    data = tmp_path / "truck"
    run = ["run", "--once", "--source", str(video), "--health-window", "1", "--bench-queries", "5",
           "--bench-duration", "0.05"]
    with live_server(tmp_path) as srv:
        out = run_agent(data, "enroll", "--server", srv.url, "--token", srv.enrollment_token, "--group", "cam")
        assert out.returncode == 0, out.stderr
        make_bundle(tmp_path / "v1", name="cam", version="1.0.0")
        make_bundle(tmp_path / "v2", name="cam", version="2.0.0", behaviour="permuted")
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
