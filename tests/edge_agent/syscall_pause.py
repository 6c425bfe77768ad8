"""Run the ``edge-agent`` CLI with a pause point *inside* a step, at a file-system call, for kill -9 tests.

``python -m tests.edge_agent.syscall_pause POINT edge-agent-args...`` runs
:func:`edge_agent.__main__.main` after wrapping ``os.link``, ``os.replace`` and
``os.symlink`` in this process; when the call named by ``POINT`` is about to
happen, it writes ``<data-dir>/paused/<POINT>`` (as the agent's own
``EDGEFLEET_AGENT_PAUSE_AT`` hook does, so :func:`~tests.edge_agent.update_harness.kill_at_pause`
works) and sleeps until it is killed. The agent's code is not changed: the
points are the file-system calls its steps make.

Points (in ``<data-dir>/slots``):

- ``stage-link:N``: before the N-th file is linked into a ``.staging-<slot>`` directory;
- ``stage-rename``: before a complete ``.staging-<slot>`` is renamed into place;
- ``switch-symlink``: before any symlink is created for ``current`` (the temp link, or ``current`` itself);
- ``switch-replace``: before anything is renamed onto ``current``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["POINTS", "install"]

POINTS = ("stage-link", "stage-rename", "switch-symlink", "switch-replace")


def _pause(marker_dir: Path, point: str) -> None:
    marker_dir.mkdir(parents=True, exist_ok=True)
    (marker_dir / point).write_text(str(os.getpid()))
    while True:
        time.sleep(3600)


def install(point: str, data_dir: Path) -> None:
    """Wrap the os calls so that the process pauses at ``point`` (see the module doc)."""
    name, _, arg = point.partition(":")
    if name not in POINTS:
        raise SystemExit(f"pause point must be one of {POINTS}, got {point!r}")
    slots, markers = (data_dir / "slots").resolve(), data_dir / "paused"
    links = 0
    real_link, real_replace, real_symlink = os.link, os.replace, os.symlink

    def in_slots(p: Any) -> Path:
        return Path(os.path.abspath(os.fspath(p)))

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal links
        d = in_slots(dst)
        if name == "stage-link" and d.parent.parent == slots and d.parent.name.startswith(".staging-"):
            links += 1
            if links == int(arg or "1"):
                _pause(markers, point)
        real_link(src, dst, *args, **kwargs)

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        s, d = in_slots(src), in_slots(dst)
        if name == "stage-rename" and s.parent == slots and s.name.startswith(".staging-"):
            _pause(markers, point)
        if name == "switch-replace" and d == slots / "current":
            _pause(markers, point)
        real_replace(src, dst, *args, **kwargs)

    def symlink(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        d = in_slots(dst)
        if name == "switch-symlink" and d.parent == slots and (d.name == "current" or d.name.startswith(".current-")):
            _pause(markers, point)
        real_symlink(src, dst, *args, **kwargs)

    os.link, os.replace, os.symlink = link, replace, symlink


def main(argv: list[str]) -> int:
    point, args = argv[0], argv[1:]
    data_dir = Path(args[args.index("--data-dir") + 1])
    install(point, data_dir)
    from edge_agent.__main__ import main as agent_main

    return agent_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
