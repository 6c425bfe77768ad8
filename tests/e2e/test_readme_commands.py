"""Every command the README shows exists: each CLI's ``--help`` runs, and every
subcommand and ``--flag`` a documented command uses is one that CLI accepts.

Commands are read from the README's ``bash`` code blocks; ``make`` targets are
checked against the Makefile, the demo and benchmark scripts against
their own ``--help``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
CLIS = ("edge-train", "edge-optimize", "ota-server", "ota-ctl", "edge-fleet-sim", "edge-agent", "edge-bench")
SCRIPTS = ("scripts/demo.py", "benchmarks/fleet_rollout.py")
FENCE = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)
SUBCOMMANDS = re.compile(r"\{([a-z0-9_,-]+)\}")


def readme_commands() -> list[str]:
    """Command lines from the README's bash blocks (continuations joined, comments dropped)."""
    commands = []
    for block in FENCE.findall(README.read_text()):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.strip().removeprefix("$ ").strip()
            if not line or line.startswith("#"):
                continue
            for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
                if part:
                    commands.append(part)
    return commands


def _programs(argv: list[str]) -> list[tuple[list[str], list[str]]]:
    """(base command to run, its tokens) for each program in a command this test can check."""
    if not argv:
        return []
    name = Path(argv[0]).name
    if name in CLIS:
        return [([str(BIN / name)], argv[1:])]
    if name.startswith("python") and len(argv) > 1 and argv[1] in SCRIPTS:
        return [([sys.executable, str(ROOT / argv[1])], argv[2:])]
    if name == "torchrun":
        # torchrun's own flags, then the module's (`-m training --config ...`)
        split = argv.index("-m") if "-m" in argv else len(argv)
        out = [(["torchrun"], [a for a in argv[1:split] if a.startswith("--")])]
        if split + 1 < len(argv):
            module = argv[split + 1]
            # `-m training` is edge-train's entry point: same parser, one interpreter start saved
            base = [str(BIN / "edge-train")] if module == "training" else [sys.executable, "-m", module]
            out.append((base, argv[split + 2 :]))
        return out
    return []


def _is_subcommand(token: str, help_out: str) -> bool:
    """A name argparse lists under "positional arguments:" (as ``{a,b}`` or indented under COMMAND)."""
    match = re.search(r"^positional arguments:\n(.*?)(?:\n\S|\Z)", help_out, re.M | re.S)
    if not match:
        return False
    section = match.group(1)
    if any(token in group.split(",") for group in SUBCOMMANDS.findall(section)):
        return True
    return bool(re.match(r"^[a-z][a-z-]*$", token)) and bool(
        re.search(rf"^ {{2,6}}{re.escape(token)}(?: {{2,}}|\n|$)", section, re.M)
    )


@functools.cache
def _entry_point(base0: str) -> Callable[[list[str]], Any]:
    """``main`` of a console script (from pyproject) or of one of the project's scripts."""
    name = Path(base0).name
    if name in CLIS:
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        module, _, func = scripts[name].partition(":")
        return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]
    spec = importlib.util.spec_from_file_location(f"_readme_{Path(base0).stem}", base0)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    # as `python path/script.py` does, the script's folder comes first on sys.path while it
    # loads: the benchmarks import their shared module (benchmarks/common.py) by name
    folder = str(Path(base0).resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(folder)
    return mod.main  # type: ignore[no-any-return]


@functools.cache
def help_text(base: tuple[str, ...]) -> str:
    """``--help`` of a (sub)command, in this process: ``main([...sub, "--help"])``."""
    if base == ("torchrun",):
        from torch.distributed.run import get_args_parser

        return get_args_parser().format_help()
    if base[0] == sys.executable and base[1] == "-m":
        return _help_subprocess(base)
    main, args = (
        (_entry_point(base[1]), list(base[2:]))
        if base[0] == sys.executable
        else (_entry_point(base[0]), list(base[1:]))
    )
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            code = main([*args, "--help"])
        except SystemExit as e:
            code = e.code
    out = buf.getvalue()
    assert code in (0, None), f"{' '.join(base)} --help exited {code}"
    assert "usage:" in out.lower(), f"{' '.join(base)} --help printed no usage: {out[:300]}"
    return out


def _help_subprocess(base: tuple[str, ...]) -> str:
    proc = subprocess.run([*base, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(base)} --help exited {proc.returncode}: {proc.stderr[-800:]}"
    assert "usage:" in proc.stdout.lower(), f"{' '.join(base)} --help printed no usage: {proc.stdout[:300]}"
    return proc.stdout


def _reads_env(name: str) -> list[str]:
    """The documented CLIs whose --help names ``name`` as the environment variable behind a flag."""
    return [cli for cli in CLIS if re.search(rf"\benv {re.escape(name)}\b", help_text((str(BIN / cli),)))]


def check_command(command: str) -> None:
    argv = shlex.split(command, comments=True)
    if argv[0] == "export":
        for assignment in argv[1:]:
            name, eq, _ = assignment.partition("=")
            assert eq and name, f"`{command}`: {assignment!r} is not NAME=VALUE"
            assert _reads_env(name), f"`{command}`: no CLI reads {name} (none names it in its --help)"
        return
    if argv[0] == "make":
        targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
        for target in (a for a in argv[1:] if "=" not in a and not a.startswith("-")):
            assert target in targets, f"`{command}`: no make target {target!r} in the Makefile"
        return
    for base, rest in _programs(argv):
        helps = [help_text(tuple(base))]
        for token in rest:
            if not token.startswith("-") and _is_subcommand(token, helps[-1]):
                base = [*base, token]
                helps.append(help_text(tuple(base)))
        everything = "\n".join(helps)
        for token in rest:
            if token.startswith("--"):
                flag = token.split("=", 1)[0]
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", everything), (
                    f"`{command}`: {' '.join(Path(b).name for b in base[-3:])} does not accept {flag}"
                )


COMMANDS = readme_commands()


def test_readme_documents_every_cli() -> None:
    text = README.read_text()
    missing = [cli for cli in CLIS if cli not in text]
    assert not missing, f"README never mentions {missing}"
    assert len(COMMANDS) >= 20, f"expected the README's guides to show commands, found {len(COMMANDS)}"


@pytest.mark.parametrize("cli", CLIS)
def test_every_cli_has_help(cli: str) -> None:
    """The installed console script itself (a fresh process) answers --help."""
    out = _help_subprocess((str(BIN / cli),))
    assert cli in out


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:60] for c in COMMANDS])
def test_readme_command_exists(command: str) -> None:
    check_command(command)


def test_readme_export_points_ota_ctl_at_the_server(tmp_path: Path) -> None:
    """The README's ``export EDGEFLEET_SERVER=... EDGEFLEET_TOKEN=...``, with this test's server and token:
    ``ota-ctl releases`` (no flags, no config file) lists what that server holds; pointed elsewhere, it
    reports that other server unreachable."""
    import os

    from tests.bundles import make_bundle
    from tests.live_server import free_port, live_server

    (export,) = [c for c in COMMANDS if c.startswith("export ") and "EDGEFLEET_SERVER=" in c]
    names = [a.partition("=")[0] for a in shlex.split(export)[1:]]
    assert names == ["EDGEFLEET_SERVER", "EDGEFLEET_TOKEN"], export
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env["HOME"] = str(tmp_path / "home")  # no ~/.config/edgefleet/ota-ctl.yaml to fall back on
    ctl = [str(BIN / "ota-ctl"), "--json", "releases"]
    with live_server(tmp_path / "srv") as srv:
        make_bundle(tmp_path / "b", name="exported", version="1.0.0")
        srv.publish(tmp_path / "b")
        env.update(EDGEFLEET_SERVER=srv.url, EDGEFLEET_TOKEN=srv.tokens["viewer"])
        out = subprocess.run(ctl, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "exported" in out.stdout and "1.0.0" in out.stdout, out.stdout
        elsewhere = f"http://127.0.0.1:{free_port()}"
        env["EDGEFLEET_SERVER"] = elsewhere
        out = subprocess.run(ctl, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert out.returncode == 3 and elsewhere in out.stderr, (out.returncode, out.stderr)
        del env["EDGEFLEET_SERVER"]
        out = subprocess.run(ctl, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert out.returncode == 2 and "EDGEFLEET_SERVER" in out.stderr, (out.returncode, out.stderr)


def test_checker_catches_an_unknown_flag() -> None:
    with pytest.raises(AssertionError, match="does not accept --no-such-flag"):
        check_command("python scripts/demo.py --no-such-flag")
    with pytest.raises(AssertionError, match="no make target"):
        check_command("make no-such-target")
    with pytest.raises(AssertionError, match="no CLI reads EDGEFLEET_SERVR"):
        check_command("export EDGEFLEET_SERVR=http://127.0.0.1:8080")
