"""Unit costs of the OTA server: the generation read of every poll, and a device report's CPU.

Two parts, each with its baseline side by side in the same run:

1. **Generation reads** (in this process, no server): the read every poll makes of the fleet
   generation (``Store.generation``) and of the generation plus the device's assignment revision
   (``Store.poll_version``, what a poll runs), on the connection the worker thread keeps for it,
   in autocommit and outside the pool — against the same statement through the SQLAlchemy pool
   (pre-ping, the query, the rollback that resets a returned connection), the way it was read
   before. On SQLite (a WAL database made by ``upgrade``) and on PostgreSQL (``--pg-url``, in a
   schema of its own dropped afterwards; skipped with a note when it cannot be reached). Timed
   with :func:`models.bench.measure_interleaved`: one read of each per round, the order rotated,
   thread CPU and wall time per read; medians with bootstrap 95 % intervals and the pool/own
   ratio of CPU medians with its paired-bootstrap interval.
2. **Reports** (a real server: ``ota-server serve`` under gunicorn on 127.0.0.1, SQLite): devices
   enrolled with their keys through the simulator's engine, a rollout to 100 %, each device
   polled once so the director records its assignment. Then ``--rounds`` rounds, the scenarios'
   order rotated every round (``common.run_rounds``), each scenario once over every device:

   - ``report`` — one signed ``downloading`` transition per device over HTTP (counted in the
     rollout; a pending state, so no stage decision): the gunicorn processes' CPU per report;
   - ``ingest`` — the same report's transaction alone, in this process (``ingest`` on the
     server's database, thread CPU): the statements a report runs, without HTTP, auth and the
     signature check;
   - ``poll-304`` — an unchanged poll of each device, for the same server's per-request floor.

   Per scenario the mean of the per-round figures with its 95 % interval (Student t).

Prints two tables and writes ``bench-out/server_costs.json``. ``--quick`` is a short smoke run.
Figures depend on the host's load: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from common import by_scenario, fmt_interval, mean_interval, median_interval, parse_with_quick, round_info, run_rounds

from models.bench import cpu_identity, measure_interleaved
from models.procs import cpu_seconds, process_tree, tail
from models.stats import speedup_interval

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("server_costs")
PG_URL = os.environ.get("EDGEFLEET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
QUICK = {"reads": 300, "devices": 40, "rounds": 3}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="server_costs.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1] + "\nExit codes: 0 measured; 1 a server or request failed; 2 bad flags.",
    )
    p.add_argument("--reads", type=int, default=3000, help="interleaved rounds of generation reads (default 3000)")
    p.add_argument("--devices", type=int, default=200, help="devices reporting, one report each per round (200)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the report scenarios (default 5)")
    p.add_argument("--pg-url", default=PG_URL, help="PostgreSQL for the reads ('' to skip; default: the tests' one)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    p.add_argument("--threads", type=int, default=2, help="threads per worker (default 2)")
    p.add_argument("--quick", action="store_true", help="a short smoke run: 300 reads, 40 devices, 3 rounds")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out", help="output directory (default bench-out/)")
    return p


# ------------------------------------------------------------------ generation reads


def _pooled(store: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The statement through the read engine's pool: check-out with pre-ping, query, reset on return."""
    with store.read_engine.connect() as c:
        return c.exec_driver_sql(sql, params).first()


@contextmanager
def pg_schema(url: str) -> Any:
    """``url`` with its search_path on a new schema, dropped on exit."""
    import secrets

    import sqlalchemy as sa

    schema = "bench_costs_" + secrets.token_hex(6)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def read_costs(url: str, database: str, reads: int) -> list[dict[str, Any]]:
    """Own-connection vs pooled generation reads on one database, interleaved."""
    from ota_server.storage import store as st
    from ota_server.storage.migrations import upgrade

    upgrade(url)
    store = st.Store(url)
    try:
        with store.tx() as conn:
            st.insert_devices(conn, [_device_row("dev_bench")])
        pg = not store.is_sqlite
        poll_sql = st._POLL_SQL_PG if pg else st._POLL_SQL_SQLITE
        fns: dict[str, Callable[[], object]] = {
            "generation, own connection": store.generation,
            "generation, pooled": functools.partial(_pooled, store, st._GENERATION_SQL),
            "poll_version, own connection": functools.partial(store.poll_version, "dev_bench"),
            "poll_version, pooled": functools.partial(_pooled, store, poll_sql, ("dev_bench",)),
        }
        if store.poll_version("dev_bench") != tuple(int(x or 0) for x in _pooled(store, poll_sql, ("dev_bench",))):
            raise RuntimeError("the two ways of reading the poll version disagree")
        timed = measure_interleaved(fns, warmup_queries=50, min_rounds=reads, min_duration_s=0.0, max_duration_s=120)
    finally:
        store.dispose()
    rows = []
    for name, t in timed.items():
        own = timed[name.replace("pooled", "own connection")]
        ratio = speedup_interval(t.cpu_ms, own.cpu_ms) if "pooled" in name else None
        rows.append(
            {
                "database": database,
                "read": name,
                "n": len(t.cpu_ms),
                "cpu_us": _us(median_interval(t.cpu_ms)),
                "wall_us": _us(median_interval(t.wall_ms)),
                "cpu_vs_own": ratio.to_dict() if ratio else None,
            }
        )
    return rows


def _us(iv: Any) -> dict[str, float]:
    return {"point": round(iv.point * 1e3, 2), "low": round(iv.low * 1e3, 2), "high": round(iv.high * 1e3, 2)}


def _device_row(device_id: str) -> dict[str, Any]:
    from ota_server.storage import store as st

    return {
        "id": device_id,
        "token_digest": "bench-" + device_id,
        "name": device_id,
        "group_name": "bench",
        "tags": [],
        "hardware": {"arch": "x86_64", "accelerator": "cpu"},
        "hardware_class": "cpu-x86_64",
        "enrolled_at": st.utcnow(),
        "last_seen": None,
        "state": None,
        "running_name": None,
        "running_version": None,
        "running_release": None,
        "last_metrics": None,
    }


# ------------------------------------------------------------------ reports


def _report(dev: Any, signed: dict[str, Any]) -> dict[str, Any]:
    """A signed ``downloading`` transition of ``dev`` for the assignment ``signed``."""
    from models.device_reports import assignment_digest, sign_report

    report: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "type": "transition",
        "state": "downloading",
        "rollout_id": signed.get("rollout_id"),
        "release": signed["release"]["counter"],
        "reason_code": None,
        "detail": "benchmark",
        "metrics": {},
        "running": None,
        "assignment_digest": assignment_digest(signed),
    }
    report["signature"] = sign_report(dev.key, dev.device_id, report)["signature"]
    return report


class ReportBench:
    """The three report scenarios against one running server; each returns one round's figures."""

    def __init__(self, server: Any, client: Any, devices: list[Any], signed: dict[str, dict[str, Any]]) -> None:
        from ota_server.config import ServerConfig
        from ota_server.settings import load_settings
        from ota_server.storage.store import Store

        self.server, self.client, self.devices, self.signed = server, client, devices, signed
        self.store = Store(load_settings(ServerConfig(data_dir=server.data_dir)).effective_db_url)
        self.etags: dict[str, str | None] = {}

    def _server_cpu(self) -> float:
        return float(cpu_seconds(process_tree(self.server.process.pid)))

    def report(self) -> dict[str, float]:
        cpu0, t0 = self._server_cpu(), time.perf_counter()
        for dev in self.devices:
            answer = self.client.post_reports(
                dev.device_id, [_report(dev, self.signed[dev.device_id])], token=dev.token
            )
            if answer.get("not_counted") or len(answer.get("accepted", [])) != 1:
                raise RuntimeError(f"{dev.device_id}: the report was not counted: {answer}")
        return self._figures(self._server_cpu() - cpu0, time.perf_counter() - t0)

    def ingest(self) -> dict[str, float]:
        from ota_server.fleet.ingest import ingest
        from ota_server.rules.reports import parse_batch

        cpu = 0.0
        t0 = time.perf_counter()
        for dev in self.devices:
            batch = parse_batch({"reports": [_report(dev, self.signed[dev.device_id])]})
            c0 = time.thread_time()
            with self.store.tx() as conn:
                answer = ingest(conn, dev.device_id, batch)
            cpu += time.thread_time() - c0
            if answer.get("not_counted"):
                raise RuntimeError(f"{dev.device_id}: the report was not counted: {answer}")
        return self._figures(cpu, time.perf_counter() - t0)

    def poll_304(self) -> dict[str, float]:
        cpu0, t0 = self._server_cpu(), time.perf_counter()
        for dev in self.devices:
            got = self.client.assignment(
                dev.device_id, token=dev.token, nonce=dev.nonce, etag=self.etags[dev.device_id]
            )
            if got.status != 304:
                raise RuntimeError(f"{dev.device_id}: expected 304 for an unchanged poll, got {got.status}")
        return self._figures(self._server_cpu() - cpu0, time.perf_counter() - t0)

    def _figures(self, cpu_s: float, wall_s: float) -> dict[str, float]:
        n = len(self.devices)
        return {"requests": n, "cpu_ms_per_request": cpu_s / n * 1e3, "wall_ms_per_request": wall_s / n * 1e3}


def report_costs(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from models.tiny import make_bundle
    from ota_server.client import RolloutRequest
    from ota_server.client.simulator import SimConfig, build_devices, enroll_all, fleet_client
    from ota_server.local import LocalServer

    with LocalServer.start(
        work / "server", workers=args.workers, threads=args.threads, cwd=ROOT, log_path=work / "server.log"
    ) as server:
        make_bundle(work / "bundle", name="bench", version="1.0.0", behaviour="ok")
        server.publish(work / "bundle")
        cfg = SimConfig(
            server=server.url,
            enroll_token=server.enrollment_credential(group="bench"),
            api_token=server.admin_token,
            devices=args.devices,
            workers=1,
            group="bench",
            name_prefix="cost",
        )
        client = fleet_client(cfg)
        devices = build_devices(cfg)
        enroll_all(client, cfg, devices)
        client.create_rollout(RolloutRequest(model="bench", version="1.0.0", group="bench", stages=[100]))
        bench = ReportBench(server, client, devices, {})
        for dev in devices:  # the director records each device's assignment: its reports count
            got = client.assignment(dev.device_id, token=dev.token, nonce=dev.nonce)
            if got.assignment is None or not got.assignment["signed"].get("release"):
                raise RuntimeError(f"{dev.device_id}: no assignment of the rollout's release: {got.status}")
            bench.signed[dev.device_id] = dict(got.assignment["signed"])
            bench.etags[dev.device_id] = got.etag
        try:
            results = run_rounds(
                {"report": bench.report, "ingest": bench.ingest, "poll-304": bench.poll_304}, args.rounds
            )
        finally:
            bench.store.dispose()
        if server.process.poll() is not None:
            print(tail(server.log_path), file=sys.stderr)
    rows = []
    for name, runs in by_scenario(results).items():
        rows.append(
            {
                "scenario": name,
                "requests": sum(int(r["requests"]) for r in runs),
                "cpu_ms": mean_interval([r["cpu_ms_per_request"] for r in runs]).to_dict(),
                "wall_ms": mean_interval([r["wall_ms_per_request"] for r in runs]).to_dict(),
                "rounds": [{k: round(v, 4) for k, v in r.items()} for r in runs],
            }
        )
    return {"rows": rows, "round_order": round_info(results)}


# ------------------------------------------------------------------ output


def print_reads(rows: Sequence[dict[str, Any]]) -> None:
    print("\ngeneration reads: median per read [95% CI], one read of each per round, order rotated")
    print(f"{'database':<10} {'read':<30} {'n':>6} {'thread CPU µs':>24} {'wall µs':>24} {'pool/own CPU':>22}")
    for r in rows:
        c, w, ratio = r["cpu_us"], r["wall_us"], r["cpu_vs_own"]
        cpu = f"{c['point']:.1f} [{c['low']:.1f}, {c['high']:.1f}]"
        wall = f"{w['point']:.1f} [{w['low']:.1f}, {w['high']:.1f}]"
        rel = f"x{ratio['point']:.2f} [{ratio['low']:.2f}, {ratio['high']:.2f}]" if ratio else "-"
        print(f"{r['database']:<10} {r['read']:<30} {r['n']:>6} {cpu:>24} {wall:>24} {rel:>22}")


def print_reports(result: dict[str, Any], args: argparse.Namespace) -> None:
    from models.stats import Interval

    order = " | ".join(",".join(o) for o in result["round_order"])
    print(
        f"\nreports: {args.devices} devices, gunicorn {args.workers} workers x {args.threads} threads, SQLite, "
        f"{args.rounds} rounds (order rotated: {order}); mean per request over the rounds [95% CI]"
    )
    print(f"{'scenario':<10} {'requests':>9} {'CPU ms/request':>26} {'wall ms/request':>26}")
    for r in result["rows"]:
        cpu, wall = Interval(**r["cpu_ms"]), Interval(**r["wall_ms"])
        print(f"{r['scenario']:<10} {r['requests']:>9} {fmt_interval(cpu, '.3f'):>26} {fmt_interval(wall, '.3f'):>26}")
    print("(report, poll-304: CPU of the gunicorn processes per request; ingest: this thread's CPU for the")
    print(" report's transaction alone, in process; wall: one client thread, one request at a time)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_quick(parser, argv, QUICK)
    if args.reads < 1 or args.devices < 1 or args.rounds < 1:
        parser.error(f"--reads, --devices and --rounds must be >= 1, got {args.reads}, {args.devices}, {args.rounds}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ota_server.client import ClientError
    from ota_server.errors import LocalServerError

    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-costs-") as tmp:
        work = Path(tmp)
        reads = read_costs(f"sqlite:///{work / 'reads.db'}", "sqlite", args.reads)
        if args.pg_url:
            try:
                with pg_schema(args.pg_url) as url:
                    reads += read_costs(url, "postgresql", args.reads)
            except Exception as e:  # noqa: BLE001 - any failure to reach it means "not measured here"
                notes.append(f"PostgreSQL not measured: {type(e).__name__}: {str(e).splitlines()[0]}")
        try:
            reports = report_costs(args, work)
        except LocalServerError as e:
            print(f"FAILED: {e}\n{tail(e.log_path)}", file=sys.stderr)
            return 1
        except (ClientError, RuntimeError) as e:
            print(f"FAILED: {e}", file=sys.stderr)
            return 1
    print_reads(reads)
    for note in notes:
        print(note)
    print_reports(reports, args)
    out = args.out / "server_costs.json"
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "pg_url"}
    out.write_text(
        json.dumps(
            {
                "config": config,
                "load_average": list(load),
                "cpu": cpu_identity(),
                "reads": reads,
                "reports": reports,
                "notes": notes,
            },
            indent=2,
        )
        + "\n"
    )
    cpu = cpu_identity()
    where = f"{cpu.get('model_name', '?')} family {cpu.get('family', '?')} model {cpu.get('model', '?')}"
    print(f"\nhost: {where}, {os.cpu_count()} cores, load average {load[0]:.1f} before the run\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
