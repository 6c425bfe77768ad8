"""The demo's storyline: which step runs when, what it prints, what it checks.

:func:`run` goes through the steps of ``scripts/demo.py`` in order, printing a
header per step and tqdm bars for the long waits, and returns the final
checks. The run's settings are :mod:`demo_config`, the releases are built by
:mod:`demo_build`, the fleet is driven by :mod:`demo_steps`, the report is
:mod:`demo_report`; the child processes are :mod:`models.procs`'s.

Every wait is on an event (a process exits, the server reports a rollout's
end, the fleet reports its state), bounded only by generous timeouts: the
flow holds on a host whose cores other work keeps busy.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import demo_build
import demo_media
import demo_steps
from demo_config import DemoConfig
from demo_report import (
    FleetRow,
    ModelFacts,
    RolloutRecord,
    fleet_table,
    gate_table,
    models_table,
    write_report,
)
from demo_steps import Agent, Clock, Server
from models.procs import Child, Processes, StepFailed

MODEL = "signs"
VERSIONS = ("1.0.0", "1.1.0", "1.2.0")
STEPS = (
    "prepare camera videos, calibration frames and hardware profiles",
    "train 1.0.0 (2-process DDP)",
    "optimize 1.0.0",
    "start the OTA server",
    "enroll the fleet",
    "install release 1.0.0 on every vehicle",
    "build 1.1.0 and 1.2.0 against the releases they replace",
    "staged rollout of 1.1.0",
    "rollout of the bad release 1.2.0",
    "report",
)


class Steps:
    """Prints numbered step headers and records each step's wall time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.timings: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def begin(self, index: int, note: str = "") -> None:
        self.end()
        name = STEPS[index]
        print(
            f"\n==> [{index + 1}/{len(STEPS)}] {name}{' — ' + note if note else ''}  (t={self.clock.now():.0f} s)",
            flush=True,
        )
        self._current = (name, time.monotonic())

    def end(self) -> None:
        if self._current:
            name, t0 = self._current
            self.timings[name] = round(time.monotonic() - t0, 1)
            print(f"    done in {self.timings[name]:.1f} s", flush=True)
            self._current = None


@dataclass
class Releases:
    """The bundles of 1.0.0, 1.1.0 and 1.2.0, what made them, and what they say of themselves."""

    bundles: dict[str, Path]
    runs: dict[str, Path] = field(default_factory=dict)
    training: Child | None = None  # 1.1.0's run, in the background while the fleet starts
    facts: dict[str, ModelFacts] = field(default_factory=dict)


def make_inputs(cfg: DemoConfig) -> tuple[list[Agent], int]:
    """Camera videos, hardware profiles and the calibration frames; returns the agents and the frame count."""
    agents = []
    for i in range(cfg.agents):
        name = f"veh-{i + 1}"
        profile = demo_media.profile_for(i)
        video = cfg.out / "cams" / f"{name}.avi"
        frames = demo_media.write_camera_video(video, vehicle=i, seconds=cfg.video_s, fps=int(cfg.camera_fps))
        demo_media.write_profile(cfg.out / "profiles" / f"{profile}.json", profile)
        rear = None
        if i == 0:  # the first vehicle has two cameras, inferred together in batches of two
            rear = cfg.out / "cams" / f"{name}-rear.avi"
            demo_media.write_camera_video(rear, vehicle=cfg.agents + i, seconds=cfg.video_s, fps=int(cfg.camera_fps))
        agents.append(Agent(name=name, profile=profile, data_dir=cfg.out / "agents" / name, source=video, rear=rear))
        print(
            f"    {name}: {profile:<6} ({demo_media.HARDWARE_PROFILES[profile][0]}), camera {video.name} "
            f"({frames} frames, one sign each)" + (f" and rear camera {rear.name}" if rear is not None else "")
        )
    calib = demo_media.extract_frames([a.source for a in agents], cfg.out / "calib", every=cfg.calib_every)
    print(
        f"    calibration frames: 1 in {cfg.calib_every} of each camera video's frames -> "
        f"{cfg.out / 'calib'} ({calib} PNG files, decoded with OpenCV as the agents decode them)"
    )
    return agents, calib


def start_releases(cfg: DemoConfig, procs: Processes, steps: Steps, calib_frames: int) -> Releases:
    """1.0.0 trained and optimized; 1.1.0's training started in the background (--quick: tiny bundles)."""
    rel = Releases({v: cfg.out / "bundles" / f"{MODEL}-{v}" for v in VERSIONS})
    if cfg.quick:
        steps.begin(1, "skipped with --quick")
        steps.begin(2, "--quick: tiny ready-made ONNX bundles (models/tiny.py)")
        from models.tiny import make_bundle  # the demo process itself imports onnx for --quick only

        for version, behaviour in zip(VERSIONS, ("ok", "ok", "permuted"), strict=True):
            make_bundle(rel.bundles[version], name=MODEL, version=version, behaviour=behaviour)
            rel.facts[version] = demo_build.model_facts(
                rel.bundles[version], source=f"tiny {behaviour!r} model", baseline=None
            )
            print(f"    {MODEL} {version}: behaviour {behaviour!r} -> {rel.bundles[version]}")
        return rel
    runs = cfg.out / "runs"
    steps.begin(1, f"edge-train --config {cfg.train_config.relative_to(demo_steps.ROOT)} --nproc-per-node 2")
    argv = demo_build.train_argv(cfg.train_config, runs, f"{MODEL}-1.0.0")
    out = procs.run("train-1.0.0", argv, timeout_s=demo_build.TRAIN_TIMEOUT_S, live=True)
    rel.runs["1.0.0"] = demo_build.trained_run(runs / f"{MODEL}-1.0.0", out, log_path=procs.log_dir / "train-1.0.0.log")
    next_argv = demo_build.train_argv(
        cfg.next_train_config, runs, f"{MODEL}-1.1.0", init_weights=rel.runs["1.0.0"] / "checkpoints" / "best.pt"
    )
    rel.training = procs.spawn("train-1.1.0", next_argv)
    print(
        f"    1.1.0: 1.0.0 trained on ({demo_build.describe_config(cfg.next_train_config)}, "
        f"{cfg.next_train_config.name}) in the background while 1.0.0 is optimized and installed"
    )
    steps.begin(2, "edge-optimize --calib-data <camera frames>: FP32 + INT8 variants, accuracy and latency")
    demo_build.optimize(procs, _optimize_argv(cfg, rel, "1.0.0", calib_frames), version="1.0.0")
    return rel


def _optimize_argv(
    cfg: DemoConfig,
    rel: Releases,
    version: str,
    calib_frames: int,
    *,
    run: Path | None = None,
    baseline: str | None = None,
    server: Server | None = None,
) -> list[str]:
    return demo_build.optimize_argv(
        run or rel.runs[version],
        rel.bundles[version],
        name=MODEL,
        version=version,
        calib_dir=cfg.out / "calib",
        calib_samples=calib_frames,
        latency_budget_ms=cfg.latency_budget_ms,
        baseline_release=baseline,
        server_url=server.url if server else None,
        trusted_root=server.root_json if server else None,
    )


def finish_releases(cfg: DemoConfig, procs: Processes, server: Server, rel: Releases, calib_frames: int) -> None:
    """1.1.0 optimized against the published 1.0.0, published; 1.2.0 made from 1.1.0 and optimized against it."""
    if cfg.quick:
        return
    assert rel.training is not None
    out = procs.join(rel.training, timeout_s=demo_build.TRAIN_TIMEOUT_S)
    rel.runs["1.1.0"] = demo_build.trained_run(cfg.out / "runs" / f"{MODEL}-1.1.0", out, log_path=rel.training.log_path)
    print(f"    edge-optimize 1.1.0 --baseline-release {MODEL}@1.0.0 (fetched from {server.url} through TUF)")
    demo_build.optimize(
        procs,
        _optimize_argv(cfg, rel, "1.1.0", calib_frames, baseline=f"{MODEL}@1.0.0", server=server),
        version="1.1.0",
    )
    _print_warnings(demo_steps.publish(procs, server, rel.bundles["1.1.0"], "1.1.0"))
    bad = demo_media.write_label_shifted_run(rel.runs["1.1.0"], cfg.out / "runs" / f"{MODEL}-1.2.0-label-shift")
    print(
        f"    1.2.0: {bad.name} (1.1.0 with its classifier rows rotated by one class), "
        f"edge-optimize --baseline-release {MODEL}@1.1.0"
    )
    demo_build.optimize(
        procs,
        _optimize_argv(cfg, rel, "1.2.0", calib_frames, run=bad, baseline=f"{MODEL}@1.1.0", server=server),
        version="1.2.0",
    )
    sources = {
        "1.0.0": demo_build.describe_config(cfg.train_config),
        "1.1.0": f"1.0.0 + {demo_build.describe_config(cfg.next_train_config)}",
        "1.2.0": "1.1.0 with its classes rotated by one",
    }
    for version, baseline in zip(VERSIONS, (None, f"{MODEL}@1.0.0", f"{MODEL}@1.1.0"), strict=True):
        rel.facts[version] = demo_build.model_facts(rel.bundles[version], source=sources[version], baseline=baseline)
    print("\n" + "\n".join("    " + line for line in models_table(list(rel.facts.values()))))


def _print_warnings(warnings: list[str]) -> None:
    for w in warnings:
        print(f"    {w}")


def rollout(
    cfg: DemoConfig,
    procs: Processes,
    server: Server,
    agents: list[Agent],
    clock: Clock,
    *,
    label: str,
    version: str,
    stages: list[int],
    expected: str,
) -> RolloutRecord:
    rid = demo_steps.create_rollout(
        procs,
        server,
        model=MODEL,
        version=version,
        stages=stages,
        max_failure_rate=cfg.max_failure_rate,
        gates={"min_agreement": cfg.min_agreement},
    )
    print(f"    ota-ctl rollout create {MODEL} {version} stages {stages} -> {rid}")
    rec = RolloutRecord(label=label, version=version, rollout_id=rid, expected=expected)
    demo_steps.watch_rollout(
        procs, server, rec, clock=clock, devices=len(agents), timeout_s=cfg.rollout_timeout_s, agents=agents
    )
    for e in rec.events:
        print(f"      t={e['t']:6.1f}s  {e['event']}")
    if rec.gates:
        print("\n".join("      " + line for line in gate_table(rec, {a.device_id: a.name for a in agents})))
    if rec.final.get("status") != expected:
        raise StepFailed(
            f"rollout of {version} ended {rec.final.get('status')!r}, expected {expected!r}: "
            f"{rec.final.get('halt_reason') or ''}",
            log_path=procs.log_dir / "server.log",
        )
    return rec


def fleet_rows(procs: Processes, server: Server, agents: list[Agent], records: list[RolloutRecord]) -> list[FleetRow]:
    by_id = {d["id"]: d for d in server.client.devices()}
    refused = {
        f["device_id"]: f"{f['state']} {r.version}: {f.get('reason_code') or '?'}"
        for r in records
        for f in r.final.get("failures") or []
    }
    statuses = demo_steps.agent_statuses(procs, agents)
    rows = []
    for a in agents:
        d = by_id.get(a.device_id, {})
        metrics = d.get("metrics") or {}
        running = d.get("running") or {}
        rows.append(
            FleetRow(
                name=a.name,
                device_id=a.device_id,
                hardware=str(d.get("hardware_class", "?")),
                profile=a.profile,
                version=str(running.get("version") or "-"),
                state=refused.get(a.device_id, str(d.get("state") or "-")),
                p95_ms=metrics.get("p95_ms"),
                fps=metrics.get("fps"),
                agreement=metrics.get("agreement"),
                agent_version=demo_steps.active_version(statuses[a.name]),
            )
        )
    return rows


def _decisions(rec: RolloutRecord) -> list[str]:
    return [str((g.get("agreement") or {}).get("decision")) for g in rec.gates.values()]


def final_checks(
    rows: list[FleetRow], records: list[RolloutRecord], facts: dict[str, ModelFacts]
) -> list[tuple[str, bool, str]]:
    good, bad = records[1], records[-1]
    reasons = bad.final.get("failure_reasons") or {}
    checks = []
    old, new = facts.get("1.0.0"), facts.get("1.1.0")
    if old is not None and new is not None and old.top1 is not None and new.top1 is not None:
        checks.append(
            (
                "1.1.0 is better than 1.0.0 on the held-out split",
                new.top1 > old.top1,
                f"top-1 {old.top1:.1%} -> {new.top1:.1%}",
            )
        )
    checks += [
        (
            "every rollout ended as expected",
            all(r.final.get("status") == r.expected for r in records),
            ", ".join(f"{r.version}: {r.final.get('status')}" for r in records),
        ),
        (
            "bad release halted automatically",
            bad.final.get("status") == "halted",
            str(bad.final.get("halt_reason") or "-"),
        ),
        (
            "no vehicle runs 1.2.0 (server view)",
            all(r.version != "1.2.0" for r in rows),
            ", ".join(f"{r.name}={r.version}" for r in rows),
        ),
        (
            "no vehicle runs 1.2.0 (edge-agent status)",
            all("1.2.0" not in r.agent_version for r in rows),
            ", ".join(f"{r.name}={r.agent_version}" for r in rows),
        ),
        (
            "every vehicle runs 1.1.0",
            all(r.version == "1.1.0" and "1.1.0" in r.agent_version for r in rows),
            f"{sum(r.version == '1.1.0' for r in rows)}/{len(rows)}",
        ),
        (
            "every vehicle's gate accepted 1.1.0 (server's evidence)",
            len(good.gates) == len(rows) and all(d == "accept" for d in _decisions(good)),
            f"{_decisions(good).count('accept')}/{len(rows)} accept",
        ),
        (
            "the vehicles that tried 1.2.0 refused it with evidence",
            bool(bad.gates) and all(d == "refuse" for d in _decisions(bad)),
            ", ".join(f"{d}" for d in _decisions(bad)) or "no gate evidence",
        ),
        ("gate reason reported", bool(reasons) or bool(bad.final.get("halt_reason")), str(reasons or "-")),
    ]
    return checks


def run(cfg: DemoConfig, procs: Processes) -> list[tuple[str, bool, str]]:
    clock = Clock()
    steps = Steps(clock)
    steps.begin(0, f"{cfg.agents} vehicles")
    agents, calib_frames = make_inputs(cfg)
    rel = start_releases(cfg, procs, steps, calib_frames)
    steps.begin(3, f"data in {cfg.out / 'server'}")
    server = demo_steps.start_server(procs, cfg.out / "server", port=cfg.port)
    print(f"    {server.url} (gunicorn, SQLite); logs in {procs.log_dir}")
    steps.begin(4, f"{len(agents)} edge-agent processes")
    for a in agents:
        profile = cfg.out / "profiles" / f"{a.profile}.json"
        demo_steps.enroll_agent(procs, server, a, profile)
        demo_steps.start_agent(procs, a, poll_s=cfg.poll_s, fps=cfg.camera_fps, health_window_s=cfg.health_window_s)
        cams = ", ".join(c.split("=", 1)[0] + " " + Path(c.split("=", 1)[1]).name for c in a.cameras())
        print(f"    {a.name} enrolled as {a.device_id} ({a.profile}); running on {cams}")
    records = []
    steps.begin(5)
    _print_warnings(demo_steps.publish(procs, server, rel.bundles["1.0.0"], "1.0.0"))
    records.append(
        rollout(
            cfg,
            procs,
            server,
            agents,
            clock,
            label="initial 1.0.0",
            version="1.0.0",
            stages=[100],
            expected="completed",
        )
    )
    steps.begin(6, "skipped with --quick" if cfg.quick else "1.1.0 against signs@1.0.0, 1.2.0 against signs@1.1.0")
    finish_releases(cfg, procs, server, rel, calib_frames)
    steps.begin(7, f"stages {list(cfg.stages)} %")
    if cfg.quick:
        _print_warnings(demo_steps.publish(procs, server, rel.bundles["1.1.0"], "1.1.0"))
    records.append(
        rollout(
            cfg,
            procs,
            server,
            agents,
            clock,
            label="staged 1.1.0",
            version="1.1.0",
            stages=list(cfg.stages),
            expected="completed",
        )
    )
    steps.begin(8, "classifier rows rotated by one class: a wrong label order")
    _print_warnings(demo_steps.publish(procs, server, rel.bundles["1.2.0"], "1.2.0"))
    records.append(
        rollout(
            cfg,
            procs,
            server,
            agents,
            clock,
            label="bad 1.2.0",
            version="1.2.0",
            stages=list(cfg.stages),
            expected="halted",
        )
    )
    unsettled = demo_steps.wait_settled(procs, server, agents, version="1.1.0", timeout_s=cfg.settle_timeout_s)
    if unsettled:
        print(f"    still not settled on 1.1.0 after {cfg.settle_timeout_s:.0f} s: {', '.join(unsettled)}")
    demo_steps.refresh(server, records[-1])  # refusals reported after the halt count too
    steps.begin(9, f"{cfg.out / 'report.md'}")
    rows = fleet_rows(procs, server, agents, records)
    checks = final_checks(rows, records, rel.facts)
    steps.end()
    write_report(
        cfg.out,
        rows=rows,
        rollouts=records,
        checks=checks,
        timings=steps.timings,
        models=[rel.facts[v] for v in VERSIONS if v in rel.facts],
        extra={"server": server.url, "agents": len(agents), "quick": cfg.quick, "calibration_frames": calib_frames},
    )
    print("\n" + "\n".join(fleet_table(rows)))
    for name, ok, detail in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}")
    print(f"\nreport: {cfg.out / 'report.md'} (charts: rollouts.png, fleet.png)")
    return checks


def wait_for_ctrl_c(cfg: DemoConfig, procs: Processes) -> None:
    print(f"\n--keep-running: server and agents keep running (logs in {procs.log_dir}); Ctrl-C stops them.")
    try:
        while True:
            procs.check_alive()
            time.sleep(2)
    except StepFailed as e:
        print(f"stopping: {e}", file=sys.stderr)
    except KeyboardInterrupt:  # the expected end of --keep-running: the checks decide the exit code
        print("\nstopping the server and the agents ...")
