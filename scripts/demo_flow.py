"""The demo's storyline: which step runs when, what it prints, what it checks.

:func:`run` goes through the steps of ``scripts/demo.py`` in order, printing a
header per step and tqdm bars for the long waits, and returns the final
checks. The steps themselves live in :mod:`scripts.demo_steps`; the report in
:mod:`scripts.demo_report`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from scripts import demo_media, demo_steps
from scripts.demo_procs import Child, Processes, StepFailed
from scripts.demo_report import FleetRow, RolloutRecord, fleet_table, write_report
from scripts.demo_steps import Agent, Clock, Server

if TYPE_CHECKING:
    from scripts.demo import DemoConfig

MODEL = "signs"
STEPS = ("prepare camera videos and hardware profiles", "train (2-process DDP)", "optimize into bundles",
         "start the OTA server", "enroll the fleet", "install release 1.0.0 on every vehicle",
         "staged rollout of 1.1.0", "rollout of the bad release 1.2.0", "report")


class Steps:
    """Prints numbered step headers and records each step's wall time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.timings: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def begin(self, index: int, note: str = "") -> None:
        self.end()
        name = STEPS[index]
        print(f"\n==> [{index + 1}/{len(STEPS)}] {name}{' — ' + note if note else ''}  "
              f"(t={self.clock.now():.0f} s)", flush=True)
        self._current = (name, time.monotonic())

    def end(self) -> None:
        if self._current:
            name, t0 = self._current
            self.timings[name] = round(time.monotonic() - t0, 1)
            print(f"    done in {self.timings[name]:.1f} s", flush=True)
            self._current = None


def make_inputs(cfg: DemoConfig) -> list[Agent]:
    agents = []
    for i in range(cfg.agents):
        name = f"veh-{i + 1}"
        profile = demo_media.profile_for(i)
        video = cfg.out / "cams" / f"{name}.avi"
        frames = demo_media.write_camera_video(video, vehicle=i, seconds=cfg.video_s, fps=int(cfg.camera_fps))
        demo_media.write_profile(cfg.out / "profiles" / f"{profile}.json", profile)
        agents.append(Agent(name=name, profile=profile, data_dir=cfg.out / "agents" / name, source=video))
        print(f"    {name}: {profile:<6} ({demo_media.HARDWARE_PROFILES[profile][0]}), camera {video.name} "
              f"({frames} frames)")
    return agents


def make_bundles(cfg: DemoConfig, procs: Processes, steps: Steps) -> tuple[dict[str, Path], list[Child]]:
    """Bundle directories for 1.0.0, 1.1.0 and the bad 1.2.0, and the background jobs still making them."""
    bundles = {v: cfg.out / "bundles" / f"{MODEL}-{v}" for v in ("1.0.0", "1.1.0", "1.2.0")}
    if cfg.quick:
        steps.begin(1, "skipped with --quick")
        steps.begin(2, "--quick: tiny ready-made ONNX bundles (tests/bundles.py)")
        from tests.bundles import make_bundle

        for version, behaviour in (("1.0.0", "ok"), ("1.1.0", "ok"), ("1.2.0", "permuted")):
            make_bundle(bundles[version], name=MODEL, version=version, behaviour=behaviour)
            print(f"    {MODEL} {version}: behaviour {behaviour!r} -> {bundles[version]}")
        return bundles, []
    steps.begin(1, f"edge-train --config {cfg.train_config.relative_to(demo_steps.ROOT)} --nproc-per-node 2")
    run_dir = demo_steps.train(procs, cfg.train_config, cfg.out / "runs")
    steps.begin(2, "edge-optimize: FP32 + INT8 variants, accuracy and latency measured")
    out = procs.run("optimize-1.0.0", demo_steps.optimize_argv(run_dir, bundles["1.0.0"], name=MODEL,
                                                                version="1.0.0"), timeout_s=900, live=True)
    print(_indent(demo_steps.variant_table(out)))
    bad_run = demo_media.write_label_shifted_run(run_dir, cfg.out / "runs" / "signs-label-shift")
    print(f"    1.1.0: a second optimize of {run_dir.name}; 1.2.0: {bad_run.name} (classifier rows rotated "
          "by one class) — both optimized in the background while the fleet starts")
    jobs = [procs.spawn(f"optimize-{v}", demo_steps.optimize_argv(src, bundles[v], name=MODEL, version=v))
            for v, src in (("1.1.0", run_dir), ("1.2.0", bad_run))]
    return bundles, jobs


def _indent(text: str, lines: int = 30) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def rollout(cfg: DemoConfig, procs: Processes, server: Server, agents: list[Agent], clock: Clock, *,
            label: str, version: str, stages: list[int], expected: str) -> RolloutRecord:
    rid = demo_steps.create_rollout(procs, server, model=MODEL, version=version, stages=stages,
                                    max_failure_rate=cfg.max_failure_rate,
                                    gates={"latency_budget_ms": cfg.latency_budget_ms,
                                           "min_agreement": cfg.min_agreement})
    print(f"    ota-ctl rollout create {MODEL} {version} stages {stages} -> {rid}")
    rec = RolloutRecord(label=label, version=version, rollout_id=rid, expected=expected)
    demo_steps.watch_rollout(procs, server, rec, clock=clock, devices=len(agents),
                             timeout_s=cfg.rollout_timeout_s, agents=agents)
    for e in rec.events:
        print(f"      t={e['t']:6.1f}s  {e['event']}")
    if rec.final.get("status") != expected:
        raise StepFailed(f"rollout of {version} ended {rec.final.get('status')!r}, expected {expected!r}: "
                         f"{rec.final.get('halt_reason') or ''}", log_path=procs.log_dir / "server.log")
    return rec


def fleet_rows(procs: Processes, server: Server, agents: list[Agent],
               records: list[RolloutRecord]) -> list[FleetRow]:
    by_id = {d["id"]: d for d in server.client.devices(server.admin_token)}
    refused = {f["device_id"]: f"{f['state']} {r.version}: {f.get('reason_code') or '?'}"
               for r in records for f in r.final.get("failures") or []}
    statuses = demo_steps.agent_statuses(procs, agents)
    rows = []
    for a in agents:
        d = by_id.get(a.device_id, {})
        metrics = d.get("metrics") or {}
        running = d.get("running") or {}
        rows.append(FleetRow(
            name=a.name, device_id=a.device_id, hardware=str(d.get("hardware_class", "?")), profile=a.profile,
            version=str(running.get("version") or "-"),
            state=refused.get(a.device_id, str(d.get("state") or "-")),
            p95_ms=metrics.get("p95_ms"), fps=metrics.get("fps"), agreement=metrics.get("agreement"),
            agent_version=demo_steps.active_version(statuses[a.name]),
        ))
    return rows


def final_checks(rows: list[FleetRow], records: list[RolloutRecord]) -> list[tuple[str, bool, str]]:
    bad = records[-1]
    reasons = bad.final.get("failure_reasons") or {}
    return [
        ("every rollout ended as expected", all(r.final.get("status") == r.expected for r in records),
         ", ".join(f"{r.version}: {r.final.get('status')}" for r in records)),
        ("bad release halted automatically", bad.final.get("status") == "halted",
         str(bad.final.get("halt_reason") or "-")),
        ("no vehicle runs 1.2.0 (server view)", all(r.version != "1.2.0" for r in rows),
         ", ".join(f"{r.name}={r.version}" for r in rows)),
        ("no vehicle runs 1.2.0 (edge-agent status)", all("1.2.0" not in r.agent_version for r in rows),
         ", ".join(f"{r.name}={r.agent_version}" for r in rows)),
        ("every vehicle runs 1.1.0", all(r.version == "1.1.0" and "1.1.0" in r.agent_version for r in rows),
         f"{sum(r.version == '1.1.0' for r in rows)}/{len(rows)}"),
        ("gate reason reported", bool(reasons) or bool(bad.final.get("halt_reason")), str(reasons or "-")),
    ]


def run(cfg: DemoConfig, procs: Processes) -> list[tuple[str, bool, str]]:
    clock = Clock()
    steps = Steps(clock)
    steps.begin(0, f"{cfg.agents} vehicles")
    agents = make_inputs(cfg)
    bundles, jobs = make_bundles(cfg, procs, steps)
    steps.begin(3, f"data in {cfg.out / 'server'}")
    server = demo_steps.start_server(procs, cfg.out / "server", port=cfg.port)
    print(f"    {server.url} (gunicorn, SQLite); logs in {procs.log_dir}")
    steps.begin(4, f"{len(agents)} edge-agent processes")
    for a in agents:
        profile = cfg.out / "profiles" / f"{a.profile}.json"
        demo_steps.enroll_agent(procs, server, a, profile)
        demo_steps.start_agent(procs, a, poll_s=cfg.poll_s, fps=cfg.camera_fps,
                               health_window_s=cfg.health_window_s)
        print(f"    {a.name} enrolled as {a.device_id} ({a.profile}); running on {a.source.name}")
    records = []
    steps.begin(5)
    demo_steps.publish(procs, server, bundles["1.0.0"], "1.0.0")
    records.append(rollout(cfg, procs, server, agents, clock, label="initial 1.0.0", version="1.0.0",
                           stages=[100], expected="completed"))
    steps.begin(6, f"stages {list(cfg.stages)} %")
    for job in jobs:
        procs.join(job, timeout_s=900)
    demo_steps.publish(procs, server, bundles["1.1.0"], "1.1.0")
    records.append(rollout(cfg, procs, server, agents, clock, label="staged 1.1.0", version="1.1.0",
                           stages=list(cfg.stages), expected="completed"))
    steps.begin(7, "classifier rows rotated by one class: a wrong label order")
    demo_steps.publish(procs, server, bundles["1.2.0"], "1.2.0")
    records.append(rollout(cfg, procs, server, agents, clock, label="bad 1.2.0", version="1.2.0",
                           stages=list(cfg.stages), expected="halted"))
    time.sleep(2 * cfg.poll_s)  # let the halted cohort settle back before the final look
    steps.begin(8, f"{cfg.out / 'report.md'}")
    rows = fleet_rows(procs, server, agents, records)
    checks = final_checks(rows, records)
    steps.end()
    write_report(cfg.out, rows=rows, rollouts=records, checks=checks, timings=steps.timings,
                 extra={"server": server.url, "agents": len(agents), "quick": cfg.quick})
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
