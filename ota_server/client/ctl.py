"""``ota-ctl``: the fleet engineer's command line for the OTA server's API.

Configuration, first found wins: ``--server``/``--token`` flags, ``EDGEFLEET_SERVER`` /
``EDGEFLEET_TOKEN``, then ``~/.config/edgefleet/ota-ctl.yaml`` (``server:`` and ``token:``
keys; another file with ``--config``). Output is a readable table, or JSON with ``--json``.

Exit codes: 0 ok, 1 the server said no (4xx/5xx, its error printed), 2 usage, 3 unreachable.
Every request goes through :class:`ota_server.client.api.OtaClient`; this module parses,
calls and prints (its sibling :mod:`ota_server.client.ctl_render` prints reason codes and gate
evidence). It imports nothing of the server: ``pip install '.[ctl]'`` is enough to run it.
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
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml
from tqdm import tqdm

from ota_server.client.api import OtaClient
from ota_server.client.bundle import make_tar
from ota_server.client.ctl_render import (
    awaiting_note,
    printable,
    render_device,
    render_failures,
    render_reasons,
    render_release,
    sanitize,
    signed_cell,
)
from ota_server.client.errors import ClientError, NotABundle, Unreachable
from ota_server.client.schema import CoverageWarning, RolloutRequest

__all__ = ["CtlConfig", "build_parser", "main", "resolve_config"]

log = logging.getLogger("ota_ctl")

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_CONFIG = Path("~/.config/edgefleet/ota-ctl.yaml")


class UsageError(Exception):
    """A command line or config file ``ota-ctl`` cannot act on (exit 2)."""


@dataclass(frozen=True)
class CtlConfig:
    server: str
    token: str | None
    timeout_s: float = 60.0  # seconds per request


def resolve_config(args: argparse.Namespace, env: Mapping[str, str]) -> CtlConfig:
    """Server and token from the flags, the environment or the config file; raises
    :class:`UsageError` when there is no server or the file cannot be read."""
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
        raise UsageError(f"no server: pass --server URL, set EDGEFLEET_SERVER, or write it to {DEFAULT_CONFIG}")
    return CtlConfig(server=str(server).rstrip("/"), token=str(token) if token else None)


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


# ------------------------------------------------------------------ commands


def cmd_publish(c: OtaClient, a: argparse.Namespace) -> Any:
    bundle_dir = Path(a.bundle_dir)
    if not bundle_dir.is_dir():
        raise UsageError(f"{bundle_dir} is not a directory")
    with tempfile.TemporaryFile() as fh:
        try:
            extra = make_tar(bundle_dir, fh)
        except NotABundle as e:
            raise UsageError(str(e)) from e
        if extra:
            log.warning("ota-ctl: left out files the manifest does not name: %s", ", ".join(extra))
        size = fh.tell()
        fh.seek(0)
        with tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"upload {bundle_dir.name}",
            disable=a.json or not sys.stderr.isatty(),
        ) as bar:
            out = c.publish(_Progress(fh, bar), length=size)
    print_warnings(out["warnings"])
    return out["release"]


def print_warnings(warnings: Sequence[CoverageWarning]) -> None:
    """The server's ``warnings`` on stderr, one line each."""
    for w in warnings:
        print(f"ota-ctl: warning: {printable(str(w['message']))}", file=sys.stderr)


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


def _names(text: str | None) -> list[str]:
    return [x for x in (text or "").split(",") if x]


def cmd_releases(c: OtaClient, a: argparse.Namespace) -> Any:
    if a.model_version is None:
        return c.releases(name=a.name)
    if a.name is not None:
        raise UsageError("give MODEL@VERSION or --name, not both")
    return c.release(*_model_version(a.model_version))


def cmd_rollout_create(c: OtaClient, a: argparse.Namespace) -> Any:
    model, version = _model_version(a.model_version)
    try:
        stages = [float(x) for x in a.stages.split(",")]
    except ValueError as e:
        raise UsageError(f"--stages must be comma-separated percentages like 1,10,50,100, got {a.stages!r}") from e
    gates = {
        k: v
        for k, v in (("latency_budget_ms", a.latency_budget_ms), ("min_agreement", a.min_agreement))
        if v is not None
    }
    out = c.create_rollout(
        RolloutRequest(
            model=model,
            version=version,
            group=a.group,
            stages=stages,
            tags=_names(a.tags),
            hardware_classes=_names(a.hardware_classes),
            max_failure_rate=_percent(a.max_failure_rate),
            success_quota=_percent(a.success_quota),
            min_devices_for_halt=a.min_devices_for_halt,
            gates=gates,
        )
    )
    print_warnings(out["warnings"])
    return out


def cmd_rollout(c: OtaClient, a: argparse.Namespace) -> Any:
    sub = a.rollout_command
    if sub == "create":
        return cmd_rollout_create(c, a)
    if sub == "list":
        return c.rollouts(status=a.status)
    if sub == "status":
        return c.rollout(a.rollout_id)
    if sub == "rollback":
        return c.rollback(a.rollout_id, to_version=a.to_version)
    actions: dict[str, Callable[[str], Any]] = {
        "pause": c.pause_rollout,
        "resume": c.resume_rollout,
        "abort": c.abort_rollout,
    }
    return actions[sub](a.rollout_id)


def cmd_devices(c: OtaClient, a: argparse.Namespace) -> Any:
    if a.devices_command == "show":
        return c.device(a.device_id)
    if a.devices_command == "revoke":
        return c.revoke_device(a.device_id, reason=a.reason)
    if a.devices_command == "approve":
        return c.approve_device(a.device_id)
    return c.devices(group=a.group, model_version=a.model_version)


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
    """The answer as ``ota-ctl`` prints it without ``--json``; every string it shows is escaped
    (:func:`ota_server.client.ctl_render.sanitize`)."""
    data = sanitize(data)
    if command == "releases" and isinstance(data, dict):
        return render_release(data, table)
    if command == "releases":
        rows = [dict(r, signed=signed_cell(r)) for r in data]
        return table(rows, ["counter", "name", "version", "signed", "rollback_of", "created_at", "created_by"])
    if command == "publish":
        note = awaiting_note(data)
        return (
            f"published {data['name']}@{data['version']} as release {data['counter']}\n"
            + (note + "\n" if note else "")
            + table([dict(f, sha256=f["hashes"]["sha256"][:16]) for f in data["files"]], ["path", "length", "sha256"])
        )
    if command == "devices" and sub == "show":
        return render_device(data)
    if command == "devices" and sub == "revoke":
        return f"device {data['id']} ({data['name']}) revoked at {data['revoked_at']}; its token is refused"
    if command == "devices" and sub == "approve":
        return f"device {data['id']} ({data['name']}) approved: it joins group {data['group']}"
    if command == "devices" and sub == "list":
        rows = [
            dict(d, running=(f"{d['running']['name']}@{d['running']['version']}" if d["running"] else None))
            for d in data
        ]
        return table(rows, ["id", "name", "group", "hardware_class", "state", "running", "last_seen", "status"])
    if command == "audit":
        return table(data, ["time", "actor", "action", "target", "detail"])
    if command == "rollout" and sub == "list":
        return table(data, ["id", "model", "version", "release", "group", "status", "stage", "created_at"])
    if command == "rollout" and isinstance(data, dict) and "progress" in data:
        return render_rollout(data)
    if command == "rollout" and isinstance(data, dict) and "rollout" in data:
        note = awaiting_note(data["release"])
        head = f"rollback release {data['release']['counter']}\n" + (note + "\n" if note else "")
        return head + render_rollout(data["rollout"])
    return json.dumps(data, indent=2)


def render_rollout(r: dict[str, Any]) -> str:
    head = (
        f"rollout {r['id']}: {r['model']}@{r['version']} (release {r['release']}) to group {r['group']}\n"
        f"status {r['status']}, stage {r['stage'] + 1}/{len(r['stages'])}, "
        f"{r['selected_devices']} devices selected"
    )
    if r.get("halt_reason"):
        head += f"\nhalted: {r['halt_reason']}"
    if r.get("enrolled_since_created"):
        head += (
            f"\n{r['enrolled_since_created']} devices of group {r['group']} enrolled since the rollout was "
            "created: only devices issued its assignment count, but check a spike (ota-server enroll-token list)"
        )
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
        prog="ota-ctl",
        description="Publish models and steer rollouts on an edgefleet OTA server.",
        epilog="Exit codes: 0 ok, 1 the server refused, 2 usage error, 3 server unreachable.",
    )
    p.add_argument("--server", help="server base URL (env EDGEFLEET_SERVER)")
    p.add_argument("--token", help="API token (env EDGEFLEET_TOKEN)")
    p.add_argument("--config", help=f"YAML file with server/token (default {DEFAULT_CONFIG})")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = p.add_subparsers(dest="command", required=True)

    pub = sub.add_parser("publish", help="upload a bundle directory as a new release (publisher)")
    pub.add_argument("bundle_dir")
    rel = sub.add_parser(
        "releases",
        help="list releases, or show one (viewer)",
        description="List releases with their counters and whether the TUF targets key has signed them (with the "
        "targets key offline, a release awaits the signature: devices cannot see it, rollouts of it are refused); "
        "with MODEL@VERSION, show that release and its files.",
    )
    rel.add_argument("model_version", nargs="?", metavar="MODEL@VERSION", help="show this release")
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
    c.add_argument(
        "--min-agreement",
        type=float,
        help="a floor under the agreement the device expects: its test's threshold is "
        "max(expected - tolerance, this); 0..1",
    )
    ls = rsub.add_parser("list", help="list rollouts")
    ls.add_argument("--status", help="active, paused, halted, completed, aborted, rolled-back, superseded")
    for name in ("status", "pause", "resume", "abort"):
        rsub.add_parser(name, help=f"{name} a rollout").add_argument("rollout_id")
    rb = rsub.add_parser("rollback", help="re-release an older version (new counter) to the same selection")
    rb.add_argument("rollout_id")
    rb.add_argument("--to-version", required=True)

    dev = sub.add_parser("devices", help="list or show devices (viewer), revoke one (operator)")
    dsub = dev.add_subparsers(dest="devices_command", required=True)
    dl = dsub.add_parser("list")
    dl.add_argument("--group")
    dl.add_argument("--model-version", help="VERSION or MODEL@VERSION the device runs")
    dsub.add_parser("show").add_argument("device_id")
    dr = dsub.add_parser("revoke", help="decommission a device: its token is refused from now on (operator)")
    dr.add_argument("device_id")
    dr.add_argument("--reason", help="why, for the audit log (at most 200 characters)")
    dsub.add_parser(
        "approve", help="accept a device pending approval (its enrollment credential asks for one; operator)"
    ).add_argument("device_id")

    au = sub.add_parser("audit", help="the audit log (admin)")
    au.add_argument("--limit", type=int, default=100)
    return p


def dispatch(c: OtaClient, a: argparse.Namespace) -> Any:
    handlers: dict[str, Callable[[OtaClient, argparse.Namespace], Any]] = {
        "publish": cmd_publish,
        "releases": cmd_releases,
        "rollout": cmd_rollout,
        "devices": cmd_devices,
        "audit": lambda c, a: c.audit(limit=a.limit),
    }
    return handlers[a.command](c, a)


def exit_code(e: ClientError | UsageError) -> int:
    """Usage 2, unreachable 3, anything the server said (or answered wrongly) 1."""
    if isinstance(e, UsageError):
        return EXIT_USAGE
    return EXIT_UNREACHABLE if isinstance(e, Unreachable) else EXIT_REFUSED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    try:
        config = resolve_config(args, os.environ)
        with OtaClient(config.server, config.token, timeout_s=config.timeout_s) as client:
            data = dispatch(client, args)
    except (ClientError, UsageError) as e:
        print(f"ota-ctl: {printable(str(e))}", file=sys.stderr)
        return exit_code(e)
    sub = getattr(args, "rollout_command", None) or getattr(args, "devices_command", None)
    print(json.dumps(data, indent=2) if args.json else render(args.command, sub, data))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
