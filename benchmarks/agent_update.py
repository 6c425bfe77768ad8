"""Benchmark the agent's update path; prints a table and writes bench-out/agent_update.json (+ a PNG).

Measured side by side in one run:

1. verify throughput: sha256 of a 100 MB target with the agent's ``verify_file``
   (length check + chunked sha256) against ``hashlib.file_digest`` as the baseline;
2. assignment → committed for a small model against the real OTA server
   (gunicorn on 127.0.0.1), per state, against a stock ``tuf.ngclient``
   refresh + download of the same target (the bare cost of a verified fetch);
3. resume overhead: a 64 MB target served by the real server, cut at 50 % and
   resumed with HTTP Range, against one uninterrupted download.

Timings on a shared or busy host are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import urllib3

from edge_agent.trust.download import DownloadPolicy, fetch, verify_file

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def bench_verify(tmp: Path, size_mb: int, repeats: int) -> dict[str, float]:
    path = tmp / "target.bin"
    with open(path, "wb") as fh:
        for _ in range(size_mb):
            fh.write(os.urandom(MB))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    agent, base = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        verify_file(path, length=size_mb * MB, sha256=digest)
        agent.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with open(path, "rb") as fh:
            assert hashlib.file_digest(fh, "sha256").hexdigest() == digest
        base.append(time.perf_counter() - t0)
    path.unlink()
    return {"size_mb": size_mb, "agent_mb_s": size_mb / min(agent), "baseline_mb_s": size_mb / min(base)}


class _Timed:
    """Wraps a controller: records how long each update step takes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.times: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in ("check", "download", "verify", "stage", "prepare", "benchmark", "swap", "watch", "commit"):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.times[name] = self.times.get(name, 0.0) + (time.perf_counter() - t0) * 1e3

        return timed


def bench_install(tmp: Path) -> dict[str, Any]:
    from tuf.ngclient import Updater

    from edge_agent.config import AgentConfig
    from edge_agent.link.identity import enroll
    from edge_agent.update.core import run_update
    from edge_agent.update.daemon import build_agent
    from models.tiny import make_bundle
    from ota_server.client import RolloutRequest
    from ota_server.local import LocalServer

    with LocalServer.start(tmp / "ota-data", cwd=ROOT, init_timeout_s=120.0) as srv:
        make_bundle(tmp / "b", name="bench", version="1.0.0")
        release = srv.publish(tmp / "b")
        config = AgentConfig(tmp / "agent", health_window_s=0.5, bench_queries=20, bench_duration_s=0.2)
        enroll(
            config.paths,
            server=srv.url,
            token=srv.enrollment_credential(group="bench"),
            name="bench",
            group="bench",
            root_file=srv.root_json,
            director_key_file=srv.director_key_file,
        )
        agent = build_agent(config)
        agent.start()
        srv.as_role("operator").create_rollout(
            RolloutRequest(model="bench", version="1.0.0", group="bench", stages=[100])
        )
        timed = _Timed(agent.controller)
        t0 = time.perf_counter()
        record, _ = run_update(timed, agent.journal)  # type: ignore[arg-type]
        total_ms = (time.perf_counter() - t0) * 1e3
        agent.controller.outbox.close()
        # baseline: a stock ngclient refresh + download of the same target, nothing else
        meta = tmp / "ngclient"
        meta.mkdir()
        t0 = time.perf_counter()
        updater = Updater(
            str(meta),
            srv.url + "/tuf/metadata/",
            str(meta),
            srv.url + "/tuf/targets/",
            bootstrap=srv.root_json.read_bytes(),
        )
        info = updater.get_targetinfo("bench/1.0.0/model.onnx")
        assert info is not None
        updater.download_target(info)
        baseline_ms = (time.perf_counter() - t0) * 1e3
    return {
        "state": record.state.value,
        "release": release["counter"],
        "total_ms": total_ms,
        "steps_ms": timed.times,
        "ngclient_fetch_ms": baseline_ms,
    }


def big_bundle(directory: Path, data: bytes) -> None:
    """A one-variant bundle whose model file is ``data`` (the server stores targets, it runs nothing)."""
    from models.bundle import write_bundle
    from models.tiny import make_bundle

    manifest = make_bundle(directory, name="blob", version="1.0.0")
    (directory / "model.onnx").write_bytes(data)
    variant = dataclasses.replace(manifest.variants[0], size=len(data), sha256=hashlib.sha256(data).hexdigest())
    write_bundle(directory, dataclasses.replace(manifest, variants=(variant,)))


def bench_resume(tmp: Path, size_mb: int, repeats: int) -> dict[str, float]:
    from ota_server.local import LocalServer

    data = os.urandom(size_mb * MB)
    sha = hashlib.sha256(data).hexdigest()
    big_bundle(tmp / "blob", data)
    with LocalServer.start(tmp / "server" / "ota-data", cwd=ROOT, init_timeout_s=120.0) as srv:
        srv.publish(tmp / "blob")
        # the consistent-snapshot target the agent downloads; Range answered by the real server
        return _resume_runs(srv.url + f"/tuf/targets/blob/1.0.0/{sha}.model.onnx", tmp, data, repeats)


def _resume_runs(url: str, tmp: Path, data: bytes, repeats: int) -> dict[str, float]:
    policy = DownloadPolicy(chunk_bytes=256 * 1024, min_rate_bps=0, free_space_margin_bytes=0)
    pool = urllib3.PoolManager()
    sha = hashlib.sha256(data).hexdigest()

    class Cut(Exception):
        pass

    def cut(total: int) -> None:
        if total >= len(data) // 2:
            raise Cut

    fulls, resumes, kept = [], [], 0
    for i in range(repeats):  # best of N: the host is shared
        t0 = time.perf_counter()
        fetch(pool, url, tmp / f"full{i}.part", length=len(data), policy=policy)
        verify_file(tmp / f"full{i}.part", length=len(data), sha256=sha)
        fulls.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with contextlib.suppress(Cut):
            fetch(pool, url, tmp / f"cut{i}.part", length=len(data), policy=policy, on_progress=cut)
        kept = (tmp / f"cut{i}.part").stat().st_size
        fetch(pool, url, tmp / f"cut{i}.part", length=len(data), policy=policy)
        verify_file(tmp / f"cut{i}.part", length=len(data), sha256=sha)
        resumes.append(time.perf_counter() - t0)
        (tmp / f"full{i}.part").unlink()
        (tmp / f"cut{i}.part").unlink()
    full, resumed = min(fulls), min(resumes)
    return {
        "size_mb": len(data) // MB,
        "full_s": full,
        "cut_and_resume_s": resumed,
        "kept_at_cut_mb": kept / MB,
        "overhead_pct": 100.0 * (resumed - full) / full,
    }


def _plot(steps: dict[str, float], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(steps)
    ax.barh(names[::-1], [steps[n] for n in names][::-1], color="#4878a8")
    ax.set_xlabel("ms")
    ax.set_title("assignment → committed, per step (small model, real server)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--verify-mb", type=int, default=100, help="target size for the hashing benchmark (MB)")
    p.add_argument("--resume-mb", type=int, default=64, help="download size for the resume benchmark (MB)")
    p.add_argument("--repeats", type=int, default=5, help="repeats of the hashing and resume runs (best is kept)")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out", help="output directory")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        verify = bench_verify(tmp, args.verify_mb, args.repeats)
        (tmp / "install").mkdir()
        install = bench_install(tmp / "install")
        (tmp / "resume").mkdir()
        resume = bench_resume(tmp / "resume", args.resume_mb, args.repeats)
    rows = [
        ("verify sha256, agent verify_file", f"{verify['agent_mb_s']:.0f} MB/s", f"{verify['size_mb']} MB target"),
        ("verify sha256, hashlib.file_digest", f"{verify['baseline_mb_s']:.0f} MB/s", "baseline"),
        ("assignment → committed (agent)", f"{install['total_ms']:.0f} ms", f"ended {install['state']}"),
        ("stock ngclient refresh + download", f"{install['ngclient_fetch_ms']:.0f} ms", "baseline: fetch only"),
    ]
    rows += [(f"  step {k}", f"{v:.0f} ms", "") for k, v in install["steps_ms"].items()]
    rows += [
        (f"download {resume['size_mb']} MB uninterrupted", f"{resume['full_s']:.2f} s", "baseline"),
        (
            "cut at 50 % + Range resume",
            f"{resume['cut_and_resume_s']:.2f} s",
            f"{resume['kept_at_cut_mb']:.1f} MB kept at the cut",
        ),
        ("resume overhead", f"{resume['overhead_pct']:+.1f} %", "vs uninterrupted"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'value':>12}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")
    result = {
        "verify": verify,
        "install": install,
        "resume": resume,
        "host": {"cpu_count": os.cpu_count(), "load_avg": os.getloadavg()},
    }
    (args.out / "agent_update.json").write_text(json.dumps(result, indent=2))
    png = _plot(install["steps_ms"], args.out / "agent_update_steps.png")
    print(f"wrote {args.out / 'agent_update.json'}" + (f" and {png}" if png else ""))
    return 0 if install["state"] == "committed" else 1


if __name__ == "__main__":
    sys.exit(main())
