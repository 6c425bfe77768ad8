"""The demo's first vehicle runs two cameras: the ``edge-agent run`` command line it is started with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import demo_steps
from edge_agent.__main__ import build_parser
from edge_agent.perception.camera import parse_cameras


class _Procs:
    """Records what ``start_agent`` would launch (the demo's process table, without a process)."""

    def __init__(self) -> None:
        self.started: list[tuple[str, list[str]]] = []

    def start(self, name: str, argv: list[str]) -> Any:
        self.started.append((name, argv))
        return object()


def _argv(agent: demo_steps.Agent) -> list[str]:
    procs = _Procs()
    demo_steps.start_agent(procs, agent, poll_s=1.0, fps=10.0)  # type: ignore[arg-type]
    ((name, argv),) = procs.started
    assert name == f"agent-{agent.name}"
    return argv[1:]  # without the console script's path


def test_a_vehicle_with_a_rear_camera_starts_with_two_named_sources(tmp_path: Path) -> None:
    front, rear = tmp_path / "veh-1.avi", tmp_path / "veh-1-rear.avi"
    agent = demo_steps.Agent(name="veh-1", profile="orin", data_dir=tmp_path / "a", source=front, rear=rear)
    args = build_parser().parse_args(_argv(agent))
    cams = parse_cameras(args.source)
    assert [(c.name, c.source.target) for c in cams] == [("front", str(front)), ("rear", str(rear))]


def test_a_vehicle_without_one_keeps_a_single_camera(tmp_path: Path) -> None:
    agent = demo_steps.Agent(name="veh-2", profile="cpu", data_dir=tmp_path / "a", source=tmp_path / "veh-2.avi")
    args = build_parser().parse_args(_argv(agent))
    assert [c.name for c in parse_cameras(args.source)] == ["front"]
