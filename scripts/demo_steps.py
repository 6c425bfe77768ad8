"""The demo's steps: each one drives edgefleet's real CLIs or HTTP API.

Training, optimizing, the server, the agents and the rollouts are the
project's own commands run as subprocesses (``edge-train``, ``edge-optimize``,
``ota-server``, ``ota-ctl``, ``edge-agent``); the demo watches rollouts and the
fleet through the server's HTTP API. Nothing here imports a stage package.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.bundle import MANIFEST_NAME, read_bundle
from scripts.demo_procs import Processes, StepFailed, tail
from scripts.demo_report import RolloutRecord
from scripts.fleet_http import (
    TERMINAL_STATUSES,
    ApiError,
    FleetClient,
    rollout_stage,
    rollout_status,
)

log = logging.getLogger("demo")

ROOT = Path(__file__).resolve().parents[1]


def tool(name: str) -> str:
    """Path of one of the project's console scripts (next to this interpreter first)."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise StepFailed(f"{name} is not installed; run `make install` (pip install -e '.[all,dev]')")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    data_dir: Path
    admin_token: str
    enroll_token: str
    client: FleetClient


@dataclass
class Agent:
    name: str
    profile: str
    data_dir: Path
    source: Path
    device_id: str = ""
    child: Any = None


@dataclass
class Clock:
    t0: float = field(default_factory=time.monotonic)
    epoch: float = field(default_factory=time.time)  # the same instant, wall clock

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 1)


def start_server(procs: Processes, data_dir: Path, *, port: int | None = None, workers: int = 2) -> Server:
    """``ota-server init`` + tokens + ``ota-server serve`` (gunicorn on 127.0.0.1)."""
    server_cli = tool("ota-server")
    out = procs.run("server-init", [server_cli, "init", "--data-dir", str(data_dir), "--json"], timeout_s=120)
    try:
        init = json.loads(out[out.index("{"):])
        admin, enroll = str(init["admin_token"]), str(init["enrollment_token"])
    except (ValueError, KeyError) as e:
        raise StepFailed(f"ota-server init --json printed no tokens ({e})",
                         log_path=procs.log_dir / "server-init.log") from e
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    procs.start("server", [server_cli, "serve", "--data-dir", str(data_dir), "--bind", f"127.0.0.1:{port}",
                           "--workers", str(workers)])
    probe = FleetClient(url, pool_size=1, timeout_s=2.0)  # short: a port held by another program never answers
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            if probe.get_json("/healthz").get("status") == "ok":
                return Server(url, data_dir, admin, enroll, FleetClient(url, pool_size=4))
        except ApiError:
            time.sleep(0.3)
    raise StepFailed(f"the server did not answer {url}/healthz within 60 s", log_path=procs.log_dir / "server.log")


def enroll_agent(procs: Processes, server: Server, agent: Agent, profile_file: Path) -> None:
    out = procs.run(f"enroll-{agent.name}", [
        tool("edge-agent"), "enroll", "--data-dir", str(agent.data_dir), "--server", server.url,
        "--token", server.enroll_token, "--name", agent.name, "--group", "demo",
        "--tag", agent.profile, "--hardware-profile", str(profile_file),
    ], timeout_s=120)
    match = re.search(r"\bdev_[A-Za-z0-9_-]+", out)
    if not match:
        raise StepFailed(f"edge-agent enroll printed no device id for {agent.name}",
                         log_path=procs.log_dir / f"enroll-{agent.name}.log")
    agent.device_id = match.group(0)


def start_agent(procs: Processes, agent: Agent, *, poll_s: float, fps: float,
                health_window_s: float | None = None) -> None:
    argv = [tool("edge-agent"), "run", "--data-dir", str(agent.data_dir), "--source", str(agent.source),
            "--poll-interval", str(poll_s), "--max-fps", str(fps)]
    if health_window_s is not None:
        argv += ["--health-window", str(health_window_s)]
    agent.child = procs.start(f"agent-{agent.name}", argv)


def agent_statuses(procs: Processes, agents: list[Agent]) -> dict[str, dict[str, Any]]:
    """``edge-agent status --json`` of every vehicle (run side by side), by vehicle name."""
    jobs = {a.name: procs.spawn(f"status-{a.name}", [tool("edge-agent"), "status", "--data-dir",
                                                     str(a.data_dir), "--json"]) for a in agents}
    out = {}
    for name, job in jobs.items():
        text = procs.join(job, timeout_s=60)
        start = text.find("{")
        try:
            out[name] = dict(json.loads(text[start:])) if start >= 0 else {}
        except json.JSONDecodeError as e:
            raise StepFailed(f"edge-agent status --json printed invalid JSON: {e}", log_path=job.log_path) from e
    return out


def ota_ctl(server: Server, *args: str) -> list[str]:
    return [tool("ota-ctl"), "--server", server.url, "--token", server.admin_token, "--json", *args]


def publishable(bundle: Path, staging: Path) -> Path:
    """A copy of ``bundle`` holding only what its manifest names (bundle.json + variant files).

    ``edge-optimize`` also leaves its report.md/json in the bundle directory, and the
    server accepts only the files a manifest names.
    """
    manifest = read_bundle(bundle)
    names = {MANIFEST_NAME, *(v.file for v in manifest.variants)}
    extra = sorted(p.name for p in bundle.iterdir() if p.name not in names)
    if not extra:
        return bundle
    dest = staging / bundle.name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in names:
        os.link(bundle / name, dest / name)
    return dest


def publish(procs: Processes, server: Server, bundle: Path, version: str) -> None:
    src = publishable(bundle, procs.log_dir.parent / "publish")
    procs.run(f"publish-{version}", ota_ctl(server, "publish", str(src)), timeout_s=300)


def create_rollout(procs: Processes, server: Server, *, model: str, version: str, stages: list[int],
                   max_failure_rate: float, gates: dict[str, float | None], group: str = "demo") -> str:
    """``ota-ctl rollout create``; ``gates`` values that are None keep the bundle's own gate."""
    argv = ota_ctl(server, "rollout", "create", f"{model}@{version}", "--group", group,
                   "--stages", ",".join(str(s) for s in stages), "--max-failure-rate", str(max_failure_rate))
    for key, value in gates.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    out = procs.run(f"rollout-{version}", argv, timeout_s=60)
    try:
        data = json.loads(out[out.index("{"):])
        return str(data.get("rollout", data)["id"])
    except (ValueError, KeyError) as e:
        raise StepFailed(f"ota-ctl rollout create printed no rollout id ({e}): {out[-300:]!r}",
                         log_path=procs.log_dir / f"rollout-{version}.log") from e


def _progress_counts(r: dict[str, Any]) -> tuple[int, int]:
    """(success, failure) device counts of a rollout document."""
    totals = r.get("totals") or {}
    return int(totals.get("success", 0)), int(totals.get("failure", 0))


def server_events(r: dict[str, Any], clock: Clock) -> list[dict[str, Any]]:
    """The rollout's own event timeline (created, stage-advanced, halted ...) in demo seconds."""
    out = []
    for e in r.get("events") or []:
        try:
            when = datetime.fromisoformat(str(e["time"]).replace("Z", "+00:00")).timestamp()
        except (KeyError, ValueError):
            continue
        detail = f" — {e['detail']}" if e.get("detail") else ""
        out.append({"t": round(when - clock.epoch, 1), "event": f"{e.get('kind')}{detail}",
                    "kind": e.get("kind")})
    return out


def watch_rollout(procs: Processes, server: Server, rec: RolloutRecord, *, clock: Clock, devices: int,
                  timeout_s: float, agents: list[Agent]) -> None:
    """Follow a rollout until it ends, recording stage advances and halts with their times."""
    from tqdm import tqdm

    last_counts = (-1, -1)
    deadline = time.monotonic() + timeout_s
    with tqdm(total=devices, desc=f"  {rec.label}", unit="dev", leave=True,
              bar_format="{desc}: {n}/{total} devices settled |{bar:20}| {elapsed} {postfix}") as bar:
        while True:
            procs.check_alive()
            r = server.client.rollout(server.admin_token, rec.rollout_id)
            status, stage = rollout_status(r), rollout_stage(r)
            success, failure = _progress_counts(r)
            rec.events = server_events(r, clock)
            if (success, failure) != last_counts:
                rec.progress.append({"t": clock.now(), "success": success, "failure": failure})
                last_counts = (success, failure)
                bar.n = min(devices, success + failure)
            bar.set_postfix_str(f"{status}, stage {stage}, ok={success} failed={failure}")
            if status in TERMINAL_STATUSES:
                rec.final = r
                return
            if time.monotonic() > deadline:
                rec.final = r
                logs = "\n".join(f"--- {a.name}:\n{tail(a.child.log_path, 8)}" for a in agents if a.child)
                raise StepFailed(f"rollout {rec.rollout_id} ({rec.label}) still {status} at stage {stage} "
                                 f"after {timeout_s:.0f} s (ok={success} failed={failure})\n{logs}",
                                 log_path=procs.log_dir / "server.log")
            time.sleep(1.0)


def train(procs: Processes, config: Path, runs_dir: Path) -> Path:
    """``edge-train`` with 2 DDP processes; returns the run directory."""
    out = procs.run("train", [tool("edge-train"), "--config", str(config), "--nproc-per-node", "2",
                              "--output", str(runs_dir), "--name", "signs"], timeout_s=900, live=True)
    runs = sorted(p.parent.parent for p in runs_dir.glob("*/checkpoints/best.json"))
    if not runs:
        raise StepFailed(f"edge-train wrote no checkpoints/best.json under {runs_dir}",
                         log_path=procs.log_dir / "train.log")
    lines = [x for x in out.replace("\r", "\n").splitlines() if x.strip() and "%|" not in x]
    for line in [x for x in lines if "epoch" in x or "best" in x][-5:]:
        print(f"    {line.split(' INFO ')[-1]}")
    return runs[-1]


# a lean optimize for the demo: the fleet's hardware classes only, one calibration method
OPTIMIZE_FLAGS = ("--targets", "cpu,jetson-orin", "--calib-methods", "minmax", "--eval-samples", "200",
                  "--bench-seconds", "0.5", "--bench-queries", "20")


def optimize_argv(run_dir: Path, bundle: Path, *, name: str, version: str) -> list[str]:
    """``edge-optimize RUN_DIR --out BUNDLE --name N --version X.Y.Z`` plus the demo's flags."""
    return [tool("edge-optimize"), str(run_dir), "--out", str(bundle), "--name", name, "--version", version,
            *OPTIMIZE_FLAGS]


def variant_table(output: str) -> str:
    """The optimizer's variant table and selection lines out of its log."""
    lines = output.replace("\r", "\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| variant")), None)
    if start is None:
        return "(no variant table in the optimizer's output)"
    keep = [line for line in lines[start:] if line.strip() and "%|" not in line]
    return "\n".join(keep[:20])


def active_version(status: dict[str, Any]) -> str:
    """``name@version`` active on a vehicle according to ``edge-agent status --json``."""
    for key in ("model", "active", "running"):
        value = status.get(key)
        if isinstance(value, dict) and value.get("version"):
            return f"{value.get('name', '?')}@{value['version']}"
        if isinstance(value, str) and value:
            return value
    return "-"
