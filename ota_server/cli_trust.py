"""``ota-server root``, ``keys`` and ``targets``: the TUF key ceremonies, the offline targets key's included.

The parsers and handlers of :mod:`ota_server.cli`'s key commands; ``cli`` adds them with
:func:`add_parsers` and dispatches through :data:`HANDLERS`. Exit codes are ``cli``'s: 3 when
``targets sign`` / ``export`` find nothing staged.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ota_server.config import ServerConfig
from ota_server.errors import SetupError
from ota_server.trust.offline import TARGETS_WARN_DAYS

__all__ = ["HANDLERS", "add_parsers"]

ROTATABLE_ROLES = ("timestamp", "snapshot", "targets", "director")  # ONLINE_ROLES of trust.repository + director


def add_parsers(sub: Any) -> None:
    """Add ``root``, ``keys`` and ``targets`` to ``ota-server``'s subcommands ``sub``."""
    r = sub.add_parser("root", help="root key operations")
    rsub = r.add_subparsers(dest="root_command", required=True)
    rr = rsub.add_parser("resign", help="write root version N+1 with a fresh expiry, signed by the root key")
    rr.add_argument("--data-dir", type=Path, required=True)
    rr.add_argument("--root-key", type=Path, required=True, help="the (offline) root key file")
    rr.add_argument("--expires-days", type=int, default=365)

    k = sub.add_parser("keys", help="key operations")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kr = ksub.add_parser("rotate", help="replace a role's key: a new root version lists the new key, not the old")
    kr.add_argument("--data-dir", type=Path, required=True)
    kr.add_argument("--role", required=True, choices=list(ROTATABLE_ROLES))
    kr.add_argument(
        "--root-key",
        type=Path,
        help="the (offline) root key file (default: DIR/keys/root.pem when it is there); not for the director",
    )
    kr.add_argument(
        "--targets-key",
        type=Path,
        metavar="OLD",
        help="--role targets with the targets key offline: the current (old) offline targets key",
    )
    kr.add_argument(
        "--new-key-out",
        type=Path,
        metavar="PATH",
        help="--role targets with the targets key offline: where to write the new targets key (0600, must not exist)",
    )
    kr.add_argument("--json", action="store_true")
    _targets_parser(sub)


def _targets_parser(sub: Any) -> None:
    """``ota-server targets status|stage-refresh|sign|export|import``: the offline targets key's ceremony."""
    t = sub.add_parser(
        "targets",
        help="the offline TUF targets key: what is staged, signing it (on the server or air-gapped)",
        description="With `init --offline-targets`, publishes, rollbacks and director rotations stage their TUF "
        "targets change; devices see it only once the offline targets key signs it. Either plug the key "
        "into the server (`targets sign --data-dir DIR --targets-key KEY`) or go air-gapped: `targets export` "
        "on the server, `targets sign FILE --targets-key KEY --out SIGNED` on the offline machine, "
        "`targets import SIGNED` on the server. Signing bumps snapshot and timestamp with the online keys and "
        "marks the staged releases signed, so rollouts of them can start. Signed targets expire (targets_ttl_s, "
        "a year by default): `targets status` warns 30 days ahead, and `targets stage-refresh` stages them "
        "unchanged so the same signing renews them.",
    )
    tsub = t.add_subparsers(dest="targets_command", required=True)
    ts = tsub.add_parser("status", help="signed and staged versions, staged changes, releases awaiting signature")
    ts.add_argument("--data-dir", type=Path, required=True)
    ts.add_argument(
        "--warn-days",
        type=float,
        default=TARGETS_WARN_DAYS,
        metavar="DAYS",
        help=f"warn when the signed targets expire within DAYS (default {TARGETS_WARN_DAYS:g})",
    )
    ts.add_argument("--json", action="store_true")
    tr = tsub.add_parser(
        "stage-refresh",
        help="stage the signed targets unchanged as the next version, so signing them renews their expiry",
        description="With the targets key offline nothing re-signs the targets before they expire. This stages "
        "them as version N+1 with no change (when changes are staged already, it leaves them: signing those "
        "renews the expiry too); then sign as usual, on the server or air-gapped. With the key online the "
        "server re-signs the targets itself once half their lifetime is gone, and this refuses (exit 1).",
    )
    tr.add_argument("--data-dir", type=Path, required=True)
    tr.add_argument("--json", action="store_true")
    tg = tsub.add_parser(
        "sign",
        help="sign the staged targets: on the server (--data-dir) or an exported FILE (--out, no data dir)",
        description="With --data-dir: verify the key is the targets key root lists, sign the staged targets, bump "
        "snapshot and timestamp, mark the releases signed, clear the staging. With FILE: sign an exported staging "
        "(`targets export`) into --out, on a machine without the data directory; `targets import` verifies it.",
    )
    tg.add_argument("file", nargs="?", type=Path, metavar="FILE", help="an exported staging (air-gapped signing)")
    tg.add_argument("--data-dir", type=Path, help="the server's data directory (signing on the server)")
    tg.add_argument(
        "--targets-key",
        type=Path,
        action="append",
        required=True,
        metavar="PATH",
        help="the offline targets key file (0600); repeat to sign with several keys",
    )
    tg.add_argument("--out", type=Path, metavar="SIGNED", help="with FILE: where to write the signed targets")
    tg.add_argument("--json", action="store_true")
    te = tsub.add_parser("export", help="write the staged targets to a file for an air-gapped signing")
    te.add_argument("--data-dir", type=Path, required=True)
    te.add_argument("--out", type=Path, required=True, metavar="FILE")
    te.add_argument("--json", action="store_true")
    ti = tsub.add_parser(
        "import", help="install targets signed air-gapped: they must sign exactly the staging, under root's key"
    )
    ti.add_argument("signed", type=Path, metavar="SIGNED")
    ti.add_argument("--data-dir", type=Path, required=True)
    ti.add_argument("--json", action="store_true")


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


def cmd_keys(args: argparse.Namespace) -> int:
    """``ota-server keys rotate``.

    Raises:
        SetupError: the data directory is not initialized, or no root key is given or found.
            RepositoryError: the key is not this repository's root key, or the repository
            cannot be written.
    """
    from ota_server.trust.offline import rotate_offline_targets, stage_director_rotation
    from ota_server.trust.repository import Repository, rotate_director, rotate_key

    config = _load(args.data_dir)
    offline = Repository(config).offline_targets
    if (args.targets_key or args.new_key_out) and not (offline and args.role == "targets"):
        raise SetupError("--targets-key and --new-key-out are for --role targets with the targets key offline")
    if args.role == "director":
        if offline:
            result = stage_director_rotation(config)
        else:
            result = rotate_director(config, bump_generation=lambda: _bump_generation(config, action="keys.rotate"))
        if args.json:
            print(json.dumps(result))
        elif offline:
            print(
                f"staged the director rotation {result['old_keyid'][:12]} -> {result['new_keyid'][:12]}: the "
                "server switches once the offline targets key signs targets listing both keys "
                f"(ota-server targets sign --data-dir {config.data_dir} --targets-key PATH); the removal of the "
                "old key is staged then and needs one more signing"
            )
        else:
            print(
                f"rotated the director key: {result['old_keyid'][:12]} -> {result['new_keyid'][:12]}; the TUF "
                "targets list it alone, devices pick it up on their next TUF refresh"
            )
        return 0
    root_key = args.root_key or config.keys_dir / "root.pem"
    if not root_key.exists():
        raise SetupError(f"no root key at {root_key}; pass --root-key with the offline root key file")
    if args.role == "targets" and offline:
        if args.targets_key is None or args.new_key_out is None:
            raise SetupError(
                "the targets key is offline: pass --targets-key with the current offline targets key and "
                "--new-key-out with where to write the new one"
            )
        result = rotate_offline_targets(
            config, root_key_path=root_key, old_key_path=args.targets_key, new_key_out=args.new_key_out
        )
    else:
        result = rotate_key(config, args.role, root_key_path=root_key)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"rotated the {result['role']} key: {result['old_keyid'][:12]} -> {result['new_keyid'][:12]} "
            f"(root version {result['root_version']}); devices pick it up on their next TUF refresh"
        )
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    """``ota-server targets status|stage-refresh|sign|export|import``.

    Raises:
        NothingStaged: nothing to sign or export. SetupError: a bad flag combination, a key
            file that cannot be loaded, the database cannot be used. RepositoryError: the wrong
            key, a stale staging, a file that is not the staging or not signed by root's key,
            a refresh with the targets key online.
    """
    from ota_server.trust import offline

    if args.targets_command == "sign" and args.file is not None:
        if args.data_dir is not None or args.out is None:
            raise SetupError("signing an exported FILE needs --out SIGNED and no --data-dir (it runs air-gapped)")
        result = offline.sign_file(args.file, targets_keys=args.targets_key, out=args.out)
        _show(
            args,
            result,
            f"signed targets version {result['version']} into {result['out']}; import it with "
            f"`ota-server targets import --data-dir DIR {result['out']}`",
        )
        return 0
    if args.data_dir is None:
        raise SetupError("pass --data-dir (signing on the server) or FILE --out SIGNED (an exported staging)")
    config = _load(args.data_dir)
    bump = lambda: _bump_generation(config, action="targets.director")  # noqa: E731
    if args.targets_command == "status":
        return _targets_status(args, config)
    if args.targets_command == "stage-refresh":
        result = offline.stage_refresh(config)
        sign = f"ota-server targets sign --data-dir {config.data_dir} --targets-key PATH"
        if result["staged"]:
            text = f"staged targets version {result['version']} unchanged; signing it renews their expiry ({sign})"
        else:
            text = (
                f"targets version {result['version']} is staged already ({result['changes']} change(s)); signing "
                f"it renews the expiry too ({sign})"
            )
        _show(args, result, text)
        return 0
    if args.targets_command == "export":
        result = offline.export_staged(config, args.out)
        _show(
            args,
            result,
            f"exported staged targets version {result['version']} to {result['out']}; sign it "
            f"offline with `ota-server targets sign {result['out']} --targets-key KEY --out SIGNED`",
        )
        return 0
    _settle(config)  # a signing that stopped before the database caught up
    if args.targets_command == "sign":
        result = offline.sign_staged(config, targets_keys=args.targets_key, bump_generation=bump)
    else:
        result = offline.import_signed(config, args.signed, bump_generation=bump)
    result["releases"] = _settle(config)
    done = ", ".join(str(c) for c in result["releases"]) or "none"
    text = f"installed signed targets version {result['version']}; releases signed: {done}"
    _show(args, result, text + (f"\ndirector: {result['director']}" if result["director"] else ""))
    return 0


def _show(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    print(json.dumps(result, indent=2) if args.json else text)


def _targets_status(args: argparse.Namespace, config: ServerConfig) -> int:
    from ota_server.provision import with_database
    from ota_server.storage import store as st
    from ota_server.trust.offline import staged_status

    if args.warn_days < 0:
        raise SetupError(f"--warn-days must be >= 0, got {args.warn_days:g}")
    status = staged_status(config, warn_days=args.warn_days)
    rows = with_database(config, st.awaiting_releases, fail="cannot read the releases")
    status["awaiting_releases"] = [{"counter": r["counter"], "name": r["name"], "version": r["version"]} for r in rows]
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    mode = "offline" if status["offline_targets"] else "online (keys/targets.pem)"
    print(f"targets key: {mode}, keyids {', '.join(k[:12] for k in status['targets_keyids'])}")
    print(
        f"signed targets: version {status['signed_version']}, expires {status['signed_expires']} "
        f"(in {status['signed_expires_in_days']:g} days)"
    )
    if status["expiry_warning"]:
        print(f"WARNING: {status['expiry_warning']}")
    if status["staged_version"] is None:
        print("staged: nothing")
    else:
        stale = " (STALE: it does not follow the signed version; it cannot be signed)" if status["stale"] else ""
        refresh = "" if status["changes"] else " (an expiry refresh)"
        print(f"staged: version {status['staged_version']}, {len(status['changes'])} change(s){refresh}{stale}")
        for c in status["changes"]:
            print(f"  {c['change']:8} {c['path']}" + (f"  (release {c['release']})" if c["release"] else ""))
    for r in status["awaiting_releases"]:
        print(f"awaiting signature: release {r['counter']} {r['name']}@{r['version']}")
    if status["director_rotation_pending"]:
        print("director rotation: pending, switches once targets listing the new key are signed")
    return 0


def _settle(config: ServerConfig) -> list[int]:
    """Mark signed the releases the signed targets list; bump the fleet generation when any.

    Raises:
        SetupError: the database cannot be used.
    """
    import sqlalchemy as sa

    from ota_server.fleet.publish import settle_signed
    from ota_server.provision import with_database
    from ota_server.storage import store as st
    from ota_server.trust.repository import Repository

    listed = Repository(config).targets().signed.targets

    def settle(conn: sa.Connection) -> list[int]:
        done = settle_signed(conn, listed)
        if done:
            st.bump_generation(conn)
            st.audit(conn, "cli:ota-server", "targets.sign", "releases", {"releases": done})
        return done

    return with_database(config, settle, fail="cannot mark the releases signed", write=True)


def _bump_generation(config: ServerConfig, *, action: str) -> None:
    """Make every worker drop its cached assignments (they re-sign at the next poll).

    Raises:
        SetupError: the database cannot be used.
    """
    import sqlalchemy as sa

    from ota_server.provision import with_database
    from ota_server.storage import store as st

    def bump(conn: sa.Connection) -> None:
        st.bump_generation(conn)
        st.audit(conn, "cli:ota-server", action, "director")

    with_database(config, bump, fail="cannot bump the fleet generation", write=True)


def _load(data_dir: Path) -> ServerConfig:
    from ota_server.settings import load_settings

    return load_settings(ServerConfig(data_dir=data_dir.resolve()))


HANDLERS = {"root": cmd_root, "keys": cmd_keys, "targets": cmd_targets}
