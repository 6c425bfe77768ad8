"""``ota-server``: initialize a data directory, create API tokens, serve under gunicorn.

    ota-server init --data-dir DIR [--db-url URL] [--offline-root PATH] [--offline-targets PATH] [--force] [--json]
    ota-server token create --data-dir DIR --role ROLE --name NAME [--json]
    ota-server token list --data-dir DIR [--json]
    ota-server token revoke --data-dir DIR ID|TOKEN
    ota-server enroll-token create --data-dir DIR [--group G] [--tags a,b] [--uses N] [--expires 7d] [--approval]
    ota-server enroll-token list|revoke --data-dir DIR [ID]
    ota-server serve --data-dir DIR [--bind 127.0.0.1:8080] [--workers 2] [--threads 2] [--debug]
                     [--report-retention-days 30] [--report-rate 1] [--report-burst 1000]
                     [--report-kib-per-s 4] [--report-burst-kib 4096]
                     [--header-timeout-s 10] [--body-timeout-s 30] [--max-connections-per-ip 32]
                     [--forwarded-allow-ips ADDRS]
    ota-server root resign --data-dir DIR --root-key PATH [--expires-days 365]
    ota-server keys rotate --data-dir DIR --role timestamp|snapshot|targets|director [--root-key PATH] [--json]
                           [--targets-key OLD --new-key-out PATH]   (targets, with the targets key offline)
    ota-server targets status --data-dir DIR [--warn-days 30] [--json]
    ota-server targets stage-refresh --data-dir DIR                      (stage unchanged targets: renew the expiry)
    ota-server targets sign --data-dir DIR --targets-key PATH            (the key plugged into the server)
    ota-server targets export --data-dir DIR --out FILE                  (air-gapped: on the server)
    ota-server targets sign FILE --targets-key PATH --out SIGNED         (air-gapped: on the offline machine)
    ota-server targets import --data-dir DIR SIGNED                      (air-gapped: back on the server)

Exit codes: 0 ok, 1 the operation failed (message on stderr), 2 usage error, 3 nothing is staged
(``targets sign`` / ``export``: the signed targets are current).

The key commands (``root``, ``keys``, ``targets``) are :mod:`ota_server.cli_trust`'s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ota_server.cli_trust import HANDLERS as TRUST_HANDLERS
from ota_server.cli_trust import add_parsers as add_trust_parsers
from ota_server.config import ServerConfig
from ota_server.errors import NothingStaged, OtaServerError, RepositoryError, SetupError

if TYPE_CHECKING:
    from ota_server.serving.connections import ConnectionLimits

__all__ = ["build_parser", "main", "with_report_limits"]

log = logging.getLogger("ota_server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ota-server",
        description="edgefleet OTA server: TUF image repository, director, rollouts and fleet API.",
        epilog="Start with `ota-server init --data-dir ./ota-data`, then `ota-server serve --data-dir ./ota-data`.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create the database, TUF keys and metadata, director key, first tokens")
    p.add_argument("--data-dir", type=Path, required=True, help="directory for the database, keys, repository")
    p.add_argument(
        "--db-url", help="SQLAlchemy URL (default: SQLite file DIR/server.db), e.g. postgresql+psycopg://user@host/db"
    )
    p.add_argument("--public-url", help="base URL devices reach this server at (default: the request's host)")
    p.add_argument(
        "--offline-root",
        type=Path,
        metavar="PATH",
        help="write the TUF root key to PATH instead of the data dir; move it to offline storage",
    )
    p.add_argument(
        "--offline-targets",
        type=Path,
        metavar="PATH",
        help="write the TUF targets key to PATH instead of the data dir: publishes are staged until "
        "`ota-server targets sign` signs them with it; move it to offline storage",
    )
    p.add_argument("--max-upload-mb", type=float, default=512.0, help="largest bundle upload (default 512 MiB)")
    p.add_argument("--force", action="store_true", help="wipe and re-create an existing data directory")
    p.add_argument("--json", action="store_true", help="print the result as JSON (tokens, paths)")

    t = sub.add_parser("token", help="manage API tokens")
    tsub = t.add_subparsers(dest="token_command", required=True)
    tc = tsub.add_parser("create", help="create an API token (shown once, stored as a SHA-256 digest)")
    tc.add_argument("--data-dir", type=Path, required=True)
    tc.add_argument(
        "--role",
        required=True,
        choices=["viewer", "publisher", "operator", "admin", "enroll"],
        help="viewer < publisher < operator < admin; 'enroll' makes a fleet enrollment token",
    )
    tc.add_argument("--name", required=True, help="who or what holds the token (shown in the audit log)")
    tc.add_argument("--json", action="store_true")
    tl = tsub.add_parser("list", help="list API tokens: id, name, role, created, revoked (never the secret)")
    tl.add_argument("--data-dir", type=Path, required=True)
    tl.add_argument("--json", action="store_true")
    tr = tsub.add_parser("revoke", help="revoke an API token; every worker refuses it within a second")
    tr.add_argument("--data-dir", type=Path, required=True)
    tr.add_argument("token_id", metavar="ID", help="the id `token list` shows (or the token itself)")

    e = sub.add_parser("enroll-token", help="manage enrollment credentials (they bind group and tags)")
    esub = e.add_subparsers(dest="enroll_command", required=True)
    ec = esub.add_parser("create", help="create an enrollment credential (token shown once)")
    ec.add_argument("--data-dir", type=Path, required=True)
    ec.add_argument("--name", default="enrollment", help="what the credential is for (audit log, list)")
    ec.add_argument("--group", default="default", help="the group its devices join (they cannot choose)")
    ec.add_argument("--tags", default="", help="comma-separated tags its devices get, e.g. a,b")
    ec.add_argument("--uses", type=int, help="enrollments it allows (default: unlimited)")
    ec.add_argument("--expires", help="lifetime like 30m, 12h, 7d (default: none)")
    ec.add_argument("--approval", action="store_true", help="its devices stay pending until an operator approves")
    ec.add_argument("--json", action="store_true")
    el = esub.add_parser("list", help="list enrollment credentials (never their tokens)")
    el.add_argument("--data-dir", type=Path, required=True)
    el.add_argument("--json", action="store_true")
    er = esub.add_parser("revoke", help="revoke an enrollment credential by id or name")
    er.add_argument("--data-dir", type=Path, required=True)
    er.add_argument("credential", help="its id (enr_...) or name")

    s = sub.add_parser("serve", help="run the HTTP server (gunicorn; --debug: Flask's development server)")
    s.add_argument("--data-dir", type=Path, required=True)
    s.add_argument("--bind", default="127.0.0.1:8080", help="HOST:PORT (default 127.0.0.1:8080)")
    s.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    s.add_argument(
        "--threads",
        type=int,
        default=2,
        help="threads per worker (gthread, default 2; more threads cost CPU per request under the GIL)",
    )
    s.add_argument("--debug", action="store_true", help="Flask development server, one process")
    s.add_argument("--access-log", action="store_true", help="log every request (gunicorn access log)")
    _report_limit_flags(s)
    s.add_argument(
        "--forwarded-allow-ips",
        default="",
        metavar="ADDRS",
        help="comma-separated proxy addresses or networks (or '*') whose X-Forwarded-For names the "
        "client for the failed-login throttle; default none: the TCP peer is the client",
    )
    s.add_argument(
        "--header-timeout-s",
        type=float,
        default=10.0,
        help="seconds a client has to send a request's head; then 408 and closed (default 10)",
    )
    s.add_argument(
        "--body-timeout-s",
        type=float,
        default=30.0,
        help="longest pause in sending a request body or reading an answer; then closed (default 30)",
    )
    s.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=32,
        help="open connections per client address (IPv6: /64) in each worker; more get 429 (default 32, 0: no cap)",
    )

    add_trust_parsers(sub)
    return parser


def cmd_init(args: argparse.Namespace) -> int:
    """``ota-server init``.

    Raises:
        SetupError: a bad flag, or a data directory that cannot be initialized (see
            :func:`ota_server.provision.init_data_dir`).
    """
    from ota_server.provision import init_data_dir

    if args.max_upload_mb <= 0:
        raise SetupError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    config = ServerConfig(
        data_dir=args.data_dir.resolve(),
        db_url=args.db_url,
        public_url=args.public_url,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
    )
    result = init_data_dir(
        config, offline_root=args.offline_root, offline_targets=args.offline_targets, force=args.force
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Initialized {config.data_dir}")
    print(f"  database:      {result['db_url']}")
    print(f"  provisioning:  {result['provisioning_dir']} (root.json, director.pub.json: install on vehicles)")
    print("Tokens (shown once, store them now):")
    print(f"  admin token:       {result['admin_token']}")
    print(f"  enrollment token:  {result['enrollment_token']}")
    if args.offline_root:
        print(
            f"\nThe TUF root key is at {result['root_key']}. Move it to offline storage now, e.g.\n"
            f"  mv {result['root_key']} /media/offline-usb/ && sync\n"
            "It is needed only to re-sign root (before it expires, or to rotate keys):\n"
            f"  ota-server root resign --data-dir {config.data_dir} --root-key /media/offline-usb/"
            f"{Path(result['root_key']).name}"
        )
    if args.offline_targets:
        print(
            f"\nThe TUF targets key is at {result['targets_key']}. Move it to offline storage now. Publishes are "
            "staged until it signs them:\n"
            f"  ota-server targets status --data-dir {config.data_dir}\n"
            f"  ota-server targets sign --data-dir {config.data_dir} --targets-key /media/offline-usb/"
            f"{Path(result['targets_key']).name}"
        )
    print(f"\nNext: ota-server serve --data-dir {config.data_dir} --bind 127.0.0.1:8080")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """``ota-server token create|list|revoke``.

    Raises:
        SetupError: the data directory is not initialized, the token cannot be stored, or the
            one to revoke is unknown, ambiguous or revoked already.
    """
    from ota_server.provision import create_token, list_tokens, revoke_token

    config = _load(args.data_dir)
    if args.token_command == "list":
        tokens = list_tokens(config)
        if args.json:
            print(json.dumps({"tokens": tokens}, indent=2))
        for t in [] if args.json else tokens:
            state = "revoked" if t["revoked"] else "active"
            print(f"{t['id']}  {t['role']:9}  {state:7}  {t['created_at']}  {t['name']}")
        return 0
    if args.token_command == "revoke":
        revoked = revoke_token(config, args.token_id)
        print(f"revoked {revoked['role']} token {revoked['id']} ({revoked['name']!r}); refused within a second")
        return 0
    token = create_token(config, role=args.role, name=args.name)
    if args.json:
        print(json.dumps({"token": token, "role": args.role, "name": args.name}))
    else:
        print(f"{args.role} token for {args.name!r} (shown once):\n{token}")
    return 0


def cmd_enroll_token(args: argparse.Namespace) -> int:
    """``ota-server enroll-token create|list|revoke``.

    Raises:
        SetupError: the data directory is not initialized, a bad flag, an unknown credential.
    """
    from ota_server import provision

    config = _load(args.data_dir)
    if args.enroll_command == "create":
        tags = [t.strip() for t in args.tags.split(",") if t.strip()]
        expires = provision.parse_duration(args.expires) if args.expires else None
        cred = provision.create_enroll_credential(
            config,
            name=args.name,
            group=args.group,
            tags=tags,
            uses=args.uses,
            expires_s=expires,
            approval=args.approval,
        )
        if args.json:
            print(json.dumps(cred))
        else:
            print(f"enrollment credential {cred['id']} ({_describe(cred)}); token (shown once):\n{cred['token']}")
        return 0
    if args.enroll_command == "list":
        creds = provision.list_enroll_credentials(config)
        if args.json:
            print(json.dumps(creds, indent=2))
        for c in [] if args.json else creds:
            print(f"{c['id'] or '-':18} {c['name']:16} {'revoked' if c['revoked'] else 'active':8} {_describe(c)}")
        return 0
    provision.revoke_enroll_credential(config, args.credential)
    print(f"revoked enrollment credential {args.credential}")
    return 0


def _describe(c: dict[str, Any]) -> str:
    uses = f"{c['uses']}/{c['max_uses']}" if c["max_uses"] is not None else f"{c['uses']}/unlimited"
    tags = ",".join(c["tags"]) or "-"
    return f"group {c['group']}, tags {tags}, uses {uses}, expires {c['expires_at'] or 'never'}" + (
        ", approval" if c["approval"] else ""
    )


def _load(data_dir: Path) -> ServerConfig:
    from ota_server.settings import load_settings

    return load_settings(ServerConfig(data_dir=data_dir.resolve()))


def _report_limit_flags(s: argparse.ArgumentParser) -> None:
    """``serve``'s flags of the per-device report quota and the report retention."""
    d = ServerConfig(data_dir=Path("."))
    s.add_argument(
        "--report-retention-days",
        type=float,
        default=d.report_retention_days,
        help=f"delete reports received over this many days ago; 0 keeps them (default {d.report_retention_days:g})",
    )
    s.add_argument(
        "--report-rate",
        type=float,
        default=d.report_rate_per_s,
        help=f"reports per second one device may post, sustained (default {d.report_rate_per_s:g})",
    )
    s.add_argument(
        "--report-burst",
        type=int,
        default=d.report_burst,
        help=f"reports one device may post at once, at least 500 (default {d.report_burst})",
    )
    s.add_argument(
        "--report-kib-per-s",
        type=float,
        default=d.report_bytes_per_s / 1024,
        help=f"KiB of report bodies per second one device may post (default {d.report_bytes_per_s / 1024:g})",
    )
    s.add_argument(
        "--report-burst-kib",
        type=int,
        default=d.report_burst_bytes // 1024,
        help=f"KiB of report bodies one device may post at once, >= 2048 (default {d.report_burst_bytes // 1024})",
    )


def with_report_limits(config: ServerConfig, args: argparse.Namespace) -> ServerConfig:
    """``config`` with ``serve``'s report quota and retention flags.

    Raises:
        SetupError: a flag out of range (:class:`ServerConfig` says which).
    """
    return config.with_overrides(
        report_retention_days=args.report_retention_days,
        report_rate_per_s=args.report_rate,
        report_burst=args.report_burst,
        report_bytes_per_s=args.report_kib_per_s * 1024,
        report_burst_bytes=args.report_burst_kib * 1024,
    )


def _with_proxies(config: ServerConfig, text: str) -> ServerConfig:
    """``config`` with ``--forwarded-allow-ips``.

    Raises:
        SetupError: an entry that is not an address, a network or ``*``.
    """
    from ota_server.serving.auth import parse_trusted_proxies

    try:
        parse_trusted_proxies(text)
    except ValueError as e:
        raise SetupError(str(e)) from e
    return config.with_overrides(forwarded_allow_ips=text)


def cmd_serve(args: argparse.Namespace) -> int:
    """``ota-server serve``: gunicorn, or with ``--debug`` Flask's development server.

    Raises:
        SetupError: a bad flag, or a data directory or database that cannot be served.
    """
    config = with_report_limits(_load(args.data_dir), args)
    config = _with_proxies(config, args.forwarded_allow_ips)
    if args.workers < 1 or args.threads < 1:
        raise SetupError(f"--workers and --threads must be >= 1, got {args.workers} and {args.threads}")
    os.environ["EDGEFLEET_DATA_DIR"] = str(config.data_dir)
    _warn_targets_expiry(config)
    if args.debug:
        from ota_server.app import create_app

        host, _, port = args.bind.rpartition(":")
        create_app(config).run(host=host or "127.0.0.1", port=int(port), debug=False, threaded=True)
        return 0
    prom_dir = config.data_dir / "run" / "prometheus"
    shutil.rmtree(prom_dir, ignore_errors=True)
    prom_dir.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
    from ota_server.serving.gunicorn_app import run_gunicorn

    return run_gunicorn(
        config,
        bind=args.bind,
        workers=args.workers,
        threads=args.threads,
        access_log=args.access_log,
        limits=_limits(args, config),
    )


def _warn_targets_expiry(config: ServerConfig) -> None:
    """Log a warning at start when the signed TUF targets expire within 30 days (or have)."""
    from ota_server.trust.offline import targets_expiry
    from ota_server.trust.repository import Repository

    try:
        warning = targets_expiry(Repository(config))["warning"]
    except RepositoryError as e:
        log.warning("cannot check when the TUF targets expire: %s", e)
        return
    if warning:
        log.warning("%s", warning)


def _limits(args: argparse.Namespace, config: ServerConfig) -> ConnectionLimits:
    """The slow-client deadlines and connection cap from ``serve``'s flags.

    Raises:
        SetupError: a timeout that is not positive, a negative cap.
    """
    from ota_server.serving.connections import ConnectionLimits

    try:
        return ConnectionLimits(
            header_timeout_s=args.header_timeout_s,
            body_timeout_s=args.body_timeout_s,
            max_connections_per_ip=args.max_connections_per_ip,
            max_buffered_body=config.max_json_bytes + 64 * 1024,  # any JSON body, with room for its head
        )
    except ValueError as e:
        raise SetupError(f"--header-timeout-s, --body-timeout-s, --max-connections-per-ip: {e}") from e


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handlers: dict[str, Any] = {
        "init": cmd_init,
        "token": cmd_token,
        "enroll-token": cmd_enroll_token,
        "serve": cmd_serve,
        **TRUST_HANDLERS,
    }
    try:
        return int(handlers[args.command](args))
    except NothingStaged as e:
        print(f"ota-server {args.command}: {e}", file=sys.stderr)
        return 3
    except OtaServerError as e:
        print(f"ota-server {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
