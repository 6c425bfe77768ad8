"""``ota-ctl``: the fleet engineer's command line for the OTA server's API.

Configuration, first found wins: ``--server``/``--token`` flags, ``EDGEFLEET_SERVER`` /
``EDGEFLEET_TOKEN``, then ``~/.config/edgefleet/ota-ctl.yaml`` (``server:`` and ``token:``
keys; another file with ``--config``). Output is a readable table, or JSON with ``--json``.

Exit codes: 0 ok, 1 the server said no (4xx/5xx, its error printed), 2 usage, 3 unreachable.
This is an HTTP client only (urllib3); it imports nothing of the server (its sibling
:mod:`ota_server.ctl_render` prints reason codes, from :mod:`models.reasons`, and gate evidence).
Warnings the server answers with — a bundle with no agreement expectation for the release a
group runs — go to stderr; the exit code stays 0.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import urllib3
import yaml
from tqdm import tqdm

from ota_server.ctl_render import render_device, render_failures, render_reasons

log = logging.getLogger("ota_ctl")

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_CONFIG = Path("~/.config/edgefleet/ota-ctl.yaml")


class CtlError(Exception):
    exit_code = EXIT_REFUSED


class UsageError(CtlError):
    exit_code = EXIT_USAGE


class Unreachable(CtlError):
    exit_code = EXIT_UNREACHABLE


class Refused(CtlError):
    exit_code = EXIT_REFUSED


@dataclass(frozen=True)
class CtlConfig:
    server: str
    token: str | None
    timeout_s: float = 60.0  # seconds per request


def resolve_config(args: argparse.Namespace, env: dict[str, str]) -> CtlConfig:
    file_values: dict[str, Any] = {}
    path = Path(args.config or env.get("EDGEFLEET_CTL_CONFIG") or DEFAULT_CONFIG).expanduser()
    if path.is_file():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise UsageError(f"cannot read config file {path}: {e}") from e
        if not isinstance(loaded, dict):
            raise UsageError(f"{path} must hold a mapping with 'server' and 'token' keys")
        file_values = loaded
    elif args.config:
        raise UsageError(f"config file {path} does not exist")
    server = args.server or env.get("EDGEFLEET_SERVER") or file_values.get("server")
    token = args.token or env.get("EDGEFLEET_TOKEN") or file_values.get("token")
    if not server:
        raise UsageError("no server: pass --server URL, set EDGEFLEET_SERVER, or write it to "
                         f"{DEFAULT_CONFIG}")
    return CtlConfig(server=str(server).rstrip("/"), token=str(token) if token else None)


class Client:
    def __init__(self, config: CtlConfig) -> None:
        self.config = config
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=10, read=config.timeout_s))

    def request(self, method: str, path: str, *, json_body: Any = None, body: Any = None,
                headers: dict[str, str] | None = None) -> Any:
        hdrs = dict(headers or {})
        if self.config.token:
            hdrs["Authorization"] = f"Bearer {self.config.token}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        try:
            resp = self.http.request(method, self.config.server + path, body=body, headers=hdrs,
                                     preload_content=True)
        except urllib3.exceptions.HTTPError as e:
            raise Unreachable(f"cannot reach {self.config.server}: {e}") from e
        try:
            data = json.loads(resp.data) if resp.data else None
        except ValueError:
            data = resp.data.decode(errors="replace")
        if resp.status >= 400:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            field = f" (field: {err['field']})" if err.get("field") else ""
            raise Refused(f"server said {resp.status} {err.get('code', '')}: {err.get('message', data)}{field}")
        return data


class _Progress(io.RawIOBase):
    """A file wrapper that advances a tqdm bar as urllib3 reads the upload."""

    def __init__(self, fh: IO[bytes], bar: tqdm[Any]) -> None:
        self._fh = fh
        self._bar = bar

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._fh.read(size)
        self._bar.update(len(chunk))
        return chunk


def bundle_files(bundle_dir: Path) -> tuple[list[Path], list[str]]:
    """The files to upload — ``bundle.json`` and the variant files it names — and the names of
    the other files in the directory, left out (``edge-optimize`` writes ``report.md`` and
    ``report.json`` beside the bundle; the server refuses files its manifest does not name)."""
    manifest = bundle_dir / "bundle.json"
    if not manifest.is_file():
        raise UsageError(f"{bundle_dir} has no bundle.json; is it a bundle directory?")
    try:
        data = json.loads(manifest.read_bytes())
        named = {str(v["file"]) for v in data["variants"]}
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{manifest} is not a readable bundle manifest: {e}") from e
    keep = {"bundle.json"} | named
    present = sorted(p for p in bundle_dir.iterdir() if p.is_file())
    files = [p for p in present if p.name in keep]
    extra = sorted(p.name for p in bundle_dir.iterdir() if p.name not in keep)
    return files, extra


def make_tar(bundle_dir: Path, dest: IO[bytes]) -> None:
    files, extra = bundle_files(bundle_dir)
    if extra:
        log.warning("ota-ctl: left out files the manifest does not name: %s", ", ".join(extra))
    with tarfile.open(fileobj=dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in files:
            tar.add(p, arcname=p.name, recursive=False)


# ------------------------------------------------------------------ commands


def cmd_publish(c: Client, a: argparse.Namespace) -> Any:
    bundle_dir = Path(a.bundle_dir)
    if not bundle_dir.is_dir():
        raise UsageError(f"{bundle_dir} is not a directory")
    with tempfile.TemporaryFile() as fh:
        make_tar(bundle_dir, fh)
        size = fh.tell()
        fh.seek(0)
        with tqdm(total=size, unit="B", unit_scale=True, desc=f"upload {bundle_dir.name}",
                  disable=a.json or not sys.stderr.isatty()) as bar:
            out = c.request("POST", "/api/v1/releases", body=_Progress(fh, bar),
                            headers={"Content-Type": "application/x-tar", "Content-Length": str(size)})
    print_warnings(out)
    return out["release"]


def print_warnings(answer: Any) -> None:
    """The server's ``warnings`` on stderr, one line each."""
    for w in (answer.get("warnings") or []) if isinstance(answer, dict) else []:
        print(f"ota-ctl: warning: {w.get('message', w)}", file=sys.stderr)


def _model_version(text: str) -> tuple[str, str]:
    name, sep, version = text.partition("@")
    if not sep or not name or not version:
        raise UsageError(f"expected MODEL@VERSION like signs@1.1.0, got {text!r}")
    return name, version


def _percent(text: str) -> float:
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError as e:
        raise UsageError(f"expected a rate like 5% or 0.05, got {text!r}") from e


def cmd_rollout_create(c: Client, a: argparse.Namespace) -> Any:
    model, version = _model_version(a.model_version)
    try:
        stages = [float(x) for x in a.stages.split(",")]
    except ValueError as e:
        raise UsageError(f"--stages must be comma-separated percentages like 1,10,50,100, got {a.stages!r}") from e
    body: dict[str, Any] = {
        "model": model, "version": version, "group": a.group, "stages": stages,
        "tags": [t for t in (a.tags or "").split(",") if t],
        "hardware_classes": [h for h in (a.hardware_classes or "").split(",") if h],
        "max_failure_rate": _percent(a.max_failure_rate), "success_quota": _percent(a.success_quota),
        "min_devices_for_halt": a.min_devices_for_halt,
    }
    gates = {k: v for k, v in (("latency_budget_ms", a.latency_budget_ms), ("min_agreement", a.min_agreement))
             if v is not None}
    if gates:
        body["gates"] = gates
    out = c.request("POST", "/api/v1/rollouts", json_body=body)
    print_warnings(out)
    return out


def cmd_rollout(c: Client, a: argparse.Namespace) -> Any:
    if a.rollout_command == "create":
        return cmd_rollout_create(c, a)
    if a.rollout_command == "list":
        return c.request("GET", "/api/v1/rollouts" + (f"?status={a.status}" if a.status else ""))["rollouts"]
    if a.rollout_command == "status":
        return c.request("GET", f"/api/v1/rollouts/{a.rollout_id}")
    if a.rollout_command == "rollback":
        return c.request("POST", f"/api/v1/rollouts/{a.rollout_id}/rollback", json_body={"to_version": a.to_version})
    return c.request("POST", f"/api/v1/rollouts/{a.rollout_id}/{a.rollout_command}", json_body={})


def cmd_devices(c: Client, a: argparse.Namespace) -> Any:
    if a.devices_command == "show":
        return c.request("GET", f"/api/v1/devices/{a.device_id}")
    query = "&".join(f"{k}={v}" for k, v in (("group", a.group), ("model_version", a.model_version)) if v)
    return c.request("GET", "/api/v1/devices" + (f"?{query}" if query else ""))["devices"]


# ------------------------------------------------------------------ output


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(r.get(col)) for col in columns] for r in rows]
    widths = [max([len(col)] + [len(row[i]) for row in cells]) for i, col in enumerate(columns)]
    lines = ["  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def render(command: str, sub: str | None, data: Any) -> str:
    if command == "releases":
        return table(data, ["counter", "name", "version", "rollback_of", "created_at", "created_by"])
    if command == "publish":
        return f"published {data['name']}@{data['version']} as release {data['counter']}\n" + table(
            [dict(f, sha256=f["hashes"]["sha256"][:16]) for f in data["files"]], ["path", "length", "sha256"])
    if command == "devices" and sub == "show":
        return render_device(data)
    if command == "devices" and sub == "list":
        rows = [dict(d, running=(f"{d['running']['name']}@{d['running']['version']}" if d["running"] else None))
                for d in data]
        return table(rows, ["id", "name", "group", "hardware_class", "state", "running", "last_seen"])
    if command == "audit":
        return table(data, ["time", "actor", "action", "target", "detail"])
    if command == "rollout" and sub == "list":
        return table(data, ["id", "model", "version", "release", "group", "status", "stage", "created_at"])
    if command == "rollout" and isinstance(data, dict) and "progress" in data:
        return render_rollout(data)
    if command == "rollout" and isinstance(data, dict) and "rollout" in data:
        return f"rollback release {data['release']['counter']}\n" + render_rollout(data["rollout"])
    return json.dumps(data, indent=2)


def render_rollout(r: dict[str, Any]) -> str:
    head = (f"rollout {r['id']}: {r['model']}@{r['version']} (release {r['release']}) to group {r['group']}\n"
            f"status {r['status']}, stage {r['stage'] + 1}/{len(r['stages'])}, "
            f"{r['selected_devices']} devices selected")
    if r.get("halt_reason"):
        head += f"\nhalted: {r['halt_reason']}"
    out = [head, "", table(r["progress"], ["stage", "percent", "devices", "succeeded", "failed", "in_progress"])]
    if r.get("variants"):
        out += ["", "variants chosen: " + ", ".join(f"{k} x{v}" for k, v in r["variants"].items())]
    if r["failure_reasons"]:
        out += [""] + render_reasons(r["failure_reasons"])
    out += render_failures(r.get("failures") or [], table)
    out += ["", table(r["events"], ["time", "kind", "detail", "actor"])]
    return "\n".join(out)


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ota-ctl", description="Publish models and steer rollouts on an edgefleet OTA server.",
        epilog="Exit codes: 0 ok, 1 the server refused, 2 usage error, 3 server unreachable.",
    )
    p.add_argument("--server", help="server base URL (env EDGEFLEET_SERVER)")
    p.add_argument("--token", help="API token (env EDGEFLEET_TOKEN)")
    p.add_argument("--config", help=f"YAML file with server/token (default {DEFAULT_CONFIG})")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = p.add_subparsers(dest="command", required=True)

    pub = sub.add_parser("publish", help="upload a bundle directory as a new release (publisher)")
    pub.add_argument("bundle_dir")
    rel = sub.add_parser("releases", help="list releases (viewer)")
    rel.add_argument("--name", help="only this model")

    ro = sub.add_parser("rollout", help="create and steer rollouts (operator; viewer to read)")
    rsub = ro.add_subparsers(dest="rollout_command", required=True)
    c = rsub.add_parser("create", help="roll MODEL@VERSION out to a group in stages")
    c.add_argument("model_version", metavar="MODEL@VERSION")
    c.add_argument("--group", default="default")
    c.add_argument("--stages", default="1,10,50,100", help="percent of the selection per stage")
    c.add_argument("--max-failure-rate", default="5%", help="halt above this failure rate (5%% or 0.05)")
    c.add_argument("--success-quota", default="100%", help="share of a stage that must succeed to advance")
    c.add_argument("--min-devices-for-halt", type=int, default=1, help="finished devices before a halt may trigger")
    c.add_argument("--tags", help="comma-separated tags every selected device must have")
    c.add_argument("--hardware-classes", help="comma-separated hardware classes, e.g. jetson-orin,cpu-x86_64")
    c.add_argument("--latency-budget-ms", type=float, help="override the bundle's latency gate")
    c.add_argument("--min-agreement", type=float,
                   help="a floor under the agreement the device expects: its test's threshold is "
                        "max(expected - tolerance, this); 0..1")
    ls = rsub.add_parser("list", help="list rollouts")
    ls.add_argument("--status", help="active, paused, halted, completed, aborted, rolled-back, superseded")
    for name in ("status", "pause", "resume", "abort"):
        rsub.add_parser(name, help=f"{name} a rollout").add_argument("rollout_id")
    rb = rsub.add_parser("rollback", help="re-release an older version (new counter) to the same selection")
    rb.add_argument("rollout_id")
    rb.add_argument("--to-version", required=True)

    dev = sub.add_parser("devices", help="list or show devices (viewer)")
    dsub = dev.add_subparsers(dest="devices_command", required=True)
    dl = dsub.add_parser("list")
    dl.add_argument("--group")
    dl.add_argument("--model-version", help="VERSION or MODEL@VERSION the device runs")
    dsub.add_parser("show").add_argument("device_id")

    au = sub.add_parser("audit", help="the audit log (admin)")
    au.add_argument("--limit", type=int, default=100)
    return p


def dispatch(c: Client, a: argparse.Namespace) -> Any:
    handlers: dict[str, Callable[[Client, argparse.Namespace], Any]] = {
        "publish": cmd_publish,
        "releases": lambda c, a: c.request("GET", "/api/v1/releases" + (f"?name={a.name}" if a.name else ""))[
            "releases"],
        "rollout": cmd_rollout,
        "devices": cmd_devices,
        "audit": lambda c, a: c.request("GET", f"/api/v1/audit?limit={a.limit}")["audit"],
    }
    return handlers[a.command](c, a)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    try:
        client = Client(resolve_config(args, dict(os.environ)))
        try:
            data = dispatch(client, args)
        finally:
            client.http.clear()
    except CtlError as e:
        print(f"ota-ctl: {e}", file=sys.stderr)
        return e.exit_code
    sub = getattr(args, "rollout_command", None) or getattr(args, "devices_command", None)
    print(json.dumps(data, indent=2) if args.json else render(args.command, sub, data))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
