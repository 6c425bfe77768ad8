"""``ota-server``: initialize a data directory, create API tokens, serve under gunicorn.

    ota-server init --data-dir DIR [--db-url URL] [--offline-root PATH] [--force] [--json]
    ota-server token create --data-dir DIR --role ROLE --name NAME [--json]
    ota-server serve --data-dir DIR [--bind 127.0.0.1:8080] [--workers 2] [--threads 2] [--debug]
    ota-server root resign --data-dir DIR --root-key PATH [--expires-days 365]

Exit codes: 0 ok, 1 the operation failed (message on stderr), 2 usage error.
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
from typing import Any

from ota_server.config import ServerConfig
from ota_server.errors import OtaServerError, SetupError

__all__ = ["build_parser", "main"]

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

    r = sub.add_parser("root", help="root key operations")
    rsub = r.add_subparsers(dest="root_command", required=True)
    rr = rsub.add_parser("resign", help="write root version N+1 with a fresh expiry, signed by the root key")
    rr.add_argument("--data-dir", type=Path, required=True)
    rr.add_argument("--root-key", type=Path, required=True, help="the (offline) root key file")
    rr.add_argument("--expires-days", type=int, default=365)
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
    result = init_data_dir(config, offline_root=args.offline_root, force=args.force)
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
    print(f"\nNext: ota-server serve --data-dir {config.data_dir} --bind 127.0.0.1:8080")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """``ota-server token create``.

    Raises:
        SetupError: the data directory is not initialized, or the token cannot be stored.
    """
    from ota_server.provision import create_token

    config = _load(args.data_dir)
    token = create_token(config, role=args.role, name=args.name)
    if args.json:
        print(json.dumps({"token": token, "role": args.role, "name": args.name}))
    else:
        print(f"{args.role} token for {args.name!r} (shown once):\n{token}")
    return 0


def _load(data_dir: Path) -> ServerConfig:
    from ota_server.settings import load_settings

    return load_settings(ServerConfig(data_dir=data_dir.resolve()))


def cmd_serve(args: argparse.Namespace) -> int:
    """``ota-server serve``: gunicorn, or with ``--debug`` Flask's development server.

    Raises:
        SetupError: a bad flag, or a data directory or database that cannot be served.
    """
    config = _load(args.data_dir)
    if args.workers < 1 or args.threads < 1:
        raise SetupError(f"--workers and --threads must be >= 1, got {args.workers} and {args.threads}")
    os.environ["EDGEFLEET_DATA_DIR"] = str(config.data_dir)
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

    return run_gunicorn(config, bind=args.bind, workers=args.workers, threads=args.threads, access_log=args.access_log)


def cmd_root(args: argparse.Namespace) -> int:
    """``ota-server root resign``.

    Raises:
        SetupError: the data directory is not initialized. RepositoryError: the key is not this
            repository's root key, or root cannot be signed.
    """
    from ota_server.trust.repository import resign_root

    config = _load(args.data_dir)
    path = resign_root(config, root_key_path=args.root_key, expires_days=args.expires_days)
    print(f"wrote {path}; devices pick it up on their next TUF refresh")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handlers: dict[str, Any] = {"init": cmd_init, "token": cmd_token, "serve": cmd_serve, "root": cmd_root}
    try:
        return int(handlers[args.command](args))
    except OtaServerError as e:
        print(f"ota-server {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
