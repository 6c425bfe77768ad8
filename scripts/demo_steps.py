"""The demo's steps: each one drives edgefleet's real CLIs or HTTP API.

Training, optimizing, the server, the agents and the rollouts are the
project's own commands run as subprocesses (``edge-train``, ``edge-optimize``,
``ota-server``, ``ota-ctl``, ``edge-agent``); the server's two commands (``init``,
``serve``) are run by :mod:`ota_server.local`, as for the tests and the benchmarks.
The demo watches rollouts and the fleet through the server's HTTP API, with the
project's API client (:class:`ota_server.client.OtaClient`, which imports nothing of
the server). Nothing else here imports a stage package.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from demo_report import RolloutRecord
from models.bundle import MANIFEST_NAME, read_bundle
from models.procs import Child, Processes, StepFailed, tail
from ota_server.client import TERMINAL_STATUSES, OtaClient
from ota_server.errors import LocalServerError
from ota_server.local import LocalServer

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


@dataclass
class Server:
    url: str
    data_dir: Path
    admin_token: str
    enroll_token: str
    client: OtaClient  # with the admin token
    root_json: Path  # the image repository's root.json (provisioning): what edge-optimize trusts


@dataclass
class Agent:
    name: str
    profile: str
    data_dir: Path
    source: Path  # the front camera's video
    device_id: str = ""
    child: Any = None
    rear: Path | None = None  # a second camera's video: this vehicle serves two cameras in one batch

    def cameras(self) -> list[str]:
        """The ``--source NAME=VIDEO`` values of this vehicle's cameras."""
        return [f"front={self.source}"] + ([f"rear={self.rear}"] if self.rear is not None else [])


@dataclass
class Clock:
    t0: float = field(default_factory=time.monotonic)
    epoch: float = field(default_factory=time.time)  # the same instant, wall clock

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 1)


def start_server(
    procs: Processes, data_dir: Path, *, port: int | None = None, workers: int = 2, timeout_s: float = 180.0
) -> Server:
    """``ota-server init`` + ``ota-server serve`` (gunicorn on 127.0.0.1), by :mod:`ota_server.local`.

    Waits for ``/healthz`` (up to ``timeout_s``: gunicorn and its workers start slowly on a
    loaded host); a server process that exits meanwhile fails the step at once. The server
    then is one of ``procs``' long-running children: watched by ``check_alive``, stopped with
    the others. Its log is ``<log_dir>/server.log``.
    """
    try:
        local = LocalServer.start(
            data_dir,
            port=port or 0,
            workers=workers,
            roles=(),
            env=procs.env,
            cwd=procs.cwd,
            log_path=procs.log_dir / "server.log",
            start_timeout_s=timeout_s,
        )
    except LocalServerError as e:
        raise StepFailed(f"server: {e}", log_path=e.log_path) from e
    procs.children.append(Child("server", local.argv, local.log_path, local.process))
    client = OtaClient(
        local.url, local.admin_token, pool_size=4, pool_block=True, timeout_s=30.0, connect_timeout_s=5.0
    )
    return Server(local.url, data_dir, local.admin_token, local.enrollment_token, client, local.root_json)


def enroll_agent(procs: Processes, server: Server, agent: Agent, profile_file: Path) -> None:
    from ota_server.config import ServerConfig
    from ota_server.provision import create_enroll_credential
    from ota_server.settings import load_settings

    # a single-use credential binding the demo group and the vehicle's profile tag, like
    # `ota-server enroll-token create --uses 1 --group demo --tags PROFILE`
    config = load_settings(ServerConfig(data_dir=server.data_dir.resolve()))
    token = create_enroll_credential(config, name=f"demo-{agent.name}", group="demo", tags=[agent.profile], uses=1)[
        "token"
    ]
    out = procs.run(
        f"enroll-{agent.name}",
        [
            tool("edge-agent"),
            "enroll",
            "--data-dir",
            str(agent.data_dir),
            "--server",
            server.url,
            "--token",
            str(token),
            "--name",
            agent.name,
            "--group",
            "demo",
            "--tag",
            agent.profile,
            "--hardware-profile",
            str(profile_file),
        ],
        timeout_s=300,
    )
    match = re.search(r"\bdev_[A-Za-z0-9_-]+", out)
    if not match:
        raise StepFailed(
            f"edge-agent enroll printed no device id for {agent.name}",
            log_path=procs.log_dir / f"enroll-{agent.name}.log",
        )
    agent.device_id = match.group(0)


def start_agent(
    procs: Processes, agent: Agent, *, poll_s: float, fps: float, health_window_s: float | None = None
) -> None:
    argv = [
        tool("edge-agent"),
        "run",
        "--data-dir",
        str(agent.data_dir),
        *(arg for camera in agent.cameras() for arg in ("--source", camera)),
        "--poll-interval",
        str(poll_s),
        "--max-fps",
        str(fps),
    ]
    if health_window_s is not None:
        argv += ["--health-window", str(health_window_s)]
    agent.child = procs.start(f"agent-{agent.name}", argv)


def agent_statuses(procs: Processes, agents: list[Agent]) -> dict[str, dict[str, Any]]:
    """``edge-agent status --json`` of every vehicle (run side by side), by vehicle name."""
    jobs = {
        a.name: procs.spawn(f"status-{a.name}", [tool("edge-agent"), "status", "--data-dir", str(a.data_dir), "--json"])
        for a in agents
    }
    out = {}
    for name, job in jobs.items():
        text = procs.join(job, timeout_s=300)
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


def publish(procs: Processes, server: Server, bundle: Path, version: str) -> list[str]:
    """``ota-ctl publish``; returns the warnings it printed (e.g. no expectation for what the fleet runs)."""
    src = publishable(bundle, procs.log_dir.parent / "publish")
    out = procs.run(f"publish-{version}", ota_ctl(server, "publish", str(src)), timeout_s=300)
    return [line.strip() for line in out.splitlines() if line.startswith("ota-ctl: warning:")]


def create_rollout(
    procs: Processes,
    server: Server,
    *,
    model: str,
    version: str,
    stages: list[int],
    max_failure_rate: float,
    gates: dict[str, float | None],
    group: str = "demo",
) -> str:
    """``ota-ctl rollout create``; ``gates`` values that are None keep the bundle's own gate."""
    argv = ota_ctl(
        server,
        "rollout",
        "create",
        f"{model}@{version}",
        "--group",
        group,
        "--stages",
        ",".join(str(s) for s in stages),
        "--max-failure-rate",
        str(max_failure_rate),
    )
    for key, value in gates.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    out = procs.run(f"rollout-{version}", argv, timeout_s=300)
    try:
        data = json.loads(out[out.index("{") :])
        return str(data["id"])  # ota-ctl --json prints the created rollout (docs/contracts.md §7)
    except (ValueError, KeyError) as e:
        raise StepFailed(
            f"ota-ctl rollout create printed no rollout id ({e}): {out[-300:]!r}",
            log_path=procs.log_dir / f"rollout-{version}.log",
        ) from e


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
        out.append({"t": round(when - clock.epoch, 1), "event": f"{e.get('kind')}{detail}", "kind": e.get("kind")})
    return out


def note_gates(rec: RolloutRecord, devices: list[dict[str, Any]]) -> None:
    """Keep each device's gate evidence for ``rec``'s rollout, as the server's fleet view shows it.

    A device's view holds only its latest gate record (``gate``: the child-process gate's
    variant and timings, then the shadow run's agreement test), so the records of one rollout
    are merged as they come: later fields win, earlier ones stay. The rollout's own view keeps
    each failed device's record; it is merged in the same way.
    """
    for d in devices:
        gate = d.get("gate")
        if isinstance(gate, dict) and gate.get("rollout_id") == rec.rollout_id:
            merged = rec.gates.setdefault(str(d["id"]), {})
            merged.update({k: v for k, v in gate.items() if v is not None})
            if d.get("state"):  # the device's latest state, while its latest gate is this rollout's
                merged["outcome"] = d["state"]
    for f in rec.final.get("failures") or []:
        merged = rec.gates.setdefault(str(f["device_id"]), {})
        if isinstance(f.get("gate"), dict):
            merged.update({k: v for k, v in f["gate"].items() if v is not None})
        merged.update(outcome=f.get("state"), reason_code=f.get("reason_code"))


def watch_rollout(
    procs: Processes,
    server: Server,
    rec: RolloutRecord,
    *,
    clock: Clock,
    devices: int,
    timeout_s: float,
    agents: list[Agent],
    poll_s: float = 1.0,
) -> None:
    """Follow a rollout until it ends, recording stage advances, halts and the vehicles' gate evidence.

    Waits on the rollout's own status (what the server records), never on elapsed time:
    ``timeout_s`` only bounds a rollout that is stuck.
    """
    from tqdm import tqdm

    last_counts = (-1, -1)
    deadline = time.monotonic() + timeout_s
    with tqdm(
        total=devices,
        desc=f"  {rec.label}",
        unit="dev",
        leave=True,
        disable=not sys.stderr.isatty(),
        bar_format="{desc}: {n}/{total} devices settled |{bar:20}| {elapsed} {postfix}",
    ) as bar:
        while True:
            procs.check_alive()
            r = dict(server.client.rollout(rec.rollout_id))
            status, stage = r["status"], r["stage"]
            success, failure = _progress_counts(r)
            rec.events = server_events(r, clock)
            note_gates(rec, server.client.devices())
            if (success, failure) != last_counts:
                rec.progress.append({"t": clock.now(), "success": success, "failure": failure})
                last_counts = (success, failure)
                bar.n = min(devices, success + failure)
            bar.set_postfix_str(f"{status}, stage {stage}, ok={success} failed={failure}")
            if status in TERMINAL_STATUSES:
                rec.final = r
                note_gates(rec, server.client.devices())
                return
            if time.monotonic() > deadline:
                rec.final = r
                logs = "\n".join(f"--- {a.name}:\n{tail(a.child.log_path, 8)}" for a in agents if a.child)
                raise StepFailed(
                    f"rollout {rec.rollout_id} ({rec.label}) still {status} at stage {stage} "
                    f"after {timeout_s:.0f} s (ok={success} failed={failure})\n{logs}",
                    log_path=procs.log_dir / "server.log",
                )
            time.sleep(poll_s)


def refresh(server: Server, rec: RolloutRecord) -> None:
    """Read ``rec``'s rollout and the fleet's gate evidence once more (after the fleet settled)."""
    rec.final = dict(server.client.rollout(rec.rollout_id))
    note_gates(rec, server.client.devices())


SETTLED_STATES = ("committed", "failed", "refused", "rolled-back")  # no update under way


def wait_settled(
    procs: Processes, server: Server, agents: list[Agent], *, version: str, timeout_s: float, poll_s: float = 1.0
) -> list[str]:
    """Wait until the server sees every vehicle running ``version`` with no update under way.

    After a halt, vehicles of the halted stage may still be finishing their shadow run of
    the refused release: the final look waits for their reports, not for a fixed time.
    Returns the vehicles still unsettled after ``timeout_s`` (empty when all settled).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        procs.check_alive()
        by_id = {d["id"]: d for d in server.client.devices()}
        pending = [
            a.name
            for a in agents
            if (by_id.get(a.device_id, {}).get("running") or {}).get("version") != version
            or by_id.get(a.device_id, {}).get("state") not in SETTLED_STATES
        ]
        if not pending or time.monotonic() > deadline:
            return pending
        time.sleep(poll_s)


def active_version(status: dict[str, Any]) -> str:
    """``name@version`` active on a vehicle according to ``edge-agent status --json`` (its
    ``model``: the active slot's manifest, or null before a first install)."""
    model = status.get("model")
    return f"{model['name']}@{model['version']}" if model else "-"
