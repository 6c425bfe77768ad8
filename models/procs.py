"""Child processes for the demo and the benchmarks: start, wait, stop, never leave one behind.

Every child runs in its own session (its own process group), with stdout and
stderr going to a log file, so a Ctrl-C in the terminal reaches only the
parent and the parent stops its children in order: SIGTERM to the whole group,
a grace period, then SIGKILL. :class:`Processes` is a context manager and also
hooks SIGINT/SIGTERM so the cleanup runs however the parent ends.
:func:`process_tree` and :func:`cpu_seconds` read what a process tree has
used from Linux ``/proc``, for benchmarks that charge a server its CPU time.

This module knows nothing of edgefleet; it runs command lines. It is no
service manager either: nothing is restarted, nothing outlives the parent.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from models.errors import ModelsError

__all__ = ["Child", "Processes", "StepFailed", "cpu_seconds", "process_tree", "stop_process", "tail"]

log = logging.getLogger(__name__)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its direct children (e.g. a gunicorn master and its workers), from Linux /proc."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid] + ([int(x) for x in children.read_text().split()] if children.exists() else [])


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (Linux /proc; a process gone counts 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


class StepFailed(ModelsError, RuntimeError):
    """A step (a child process) failed or did not finish; ``log_path`` names the log whose tail explains it."""

    def __init__(self, message: str, *, log_path: Path | None = None) -> None:
        self.log_path = log_path
        super().__init__(message)


def tail(path: Path | None, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file ("" when there is none)."""
    if path is None or not path.is_file():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _last_line(path: Path, *, window: int = 4096) -> str:
    """The newest non-empty line of a log (progress bars rewrite lines with \\r)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - window))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [x.strip() for x in text.replace("\r", "\n").splitlines() if x.strip()]
    return lines[-1] if lines else ""


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_process(proc: subprocess.Popen[bytes], *, grace_s: float = 10.0) -> int | None:
    """SIGTERM the process group, wait ``grace_s``, then SIGKILL it; returns the exit code."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.0f s: SIGKILL", proc.pid, grace_s)
    # whatever is left of the group (grandchildren included) goes now
    _signal_group(proc, signal.SIGKILL)
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


class Processes:
    """Owns the long-running children and the short steps the parent waits for."""

    def __init__(self, log_dir: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.children: list[Child] = []  # long-running services: dying is an error
        self.jobs: list[Child] = []  # background steps: they end, and are waited for
        self._old_handlers: dict[int, object] = {}

    def __enter__(self) -> Processes:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        # a second Ctrl-C must not cut the cleanup short: it is bounded by the grace period anyway
        for sig in self._old_handlers:
            signal.signal(sig, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # turn SIGTERM into the same unwinding as Ctrl-C: the finally blocks stop the children
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    def _popen(self, argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as fh:
            fh.write(f"$ {' '.join(argv)}\n".encode())
            fh.flush()
            return subprocess.Popen(
                list(argv),
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    def start(self, name: str, argv: Sequence[str]) -> Child:
        """Start a long-running child; its output goes to ``<log_dir>/<name>.log``."""
        log_path = self.log_dir / f"{name}.log"
        child = Child(name, list(argv), log_path, self._popen(argv, log_path))
        self.children.append(child)
        log.debug("started %s (pid %d): %s", name, child.proc.pid, " ".join(argv))
        return child

    def run(self, name: str, argv: Sequence[str], *, timeout_s: float, live: bool = False) -> str:
        """Run a step to completion; returns its output, raises :class:`StepFailed` on failure.

        ``live`` shows the newest line of the step's log under a tqdm timer while it runs.
        """
        log_path = self.log_dir / f"{name}.log"
        start = log_path.stat().st_size if log_path.exists() else 0
        proc = self._popen(argv, log_path)
        try:
            code = self._wait(proc, log_path, timeout_s=timeout_s, live=live, label=name)
        except subprocess.TimeoutExpired:
            stop_process(proc, grace_s=5)
            raise StepFailed(f"{name} did not finish within {timeout_s:.0f} s", log_path=log_path) from None
        finally:
            if proc.poll() is None:  # interrupted while waiting
                stop_process(proc, grace_s=5)
        with open(log_path, "rb") as fh:
            fh.seek(start)
            output = fh.read().decode(errors="replace")
        if code != 0:
            raise StepFailed(f"{name} exited with code {code}: {' '.join(argv)}", log_path=log_path)
        return output

    @staticmethod
    def _wait(proc: subprocess.Popen[bytes], log_path: Path, *, timeout_s: float, live: bool, label: str) -> int:
        if not live:
            return proc.wait(timeout=timeout_s)
        from tqdm import tqdm

        deadline = time.monotonic() + timeout_s
        # a timer line is for a terminal; in a log file each refresh would be one more line
        with tqdm(
            desc=f"    {label}", bar_format="{desc} [{elapsed}]{postfix}", leave=False, disable=not sys.stderr.isatty()
        ) as bar:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(proc.args, timeout_s)
                bar.set_postfix_str(_last_line(log_path)[:90])
                time.sleep(1.0)
        return int(proc.returncode)

    def spawn(self, name: str, argv: Sequence[str]) -> Child:
        """Start a step in the background; :meth:`join` waits for it."""
        log_path = self.log_dir / f"{name}.log"
        job = Child(name, list(argv), log_path, self._popen(argv, log_path))
        self.jobs.append(job)
        return job

    def join(self, job: Child, *, timeout_s: float) -> str:
        """Wait for a background step; returns its output, raises :class:`StepFailed` on failure."""
        try:
            code = self._wait(job.proc, job.log_path, timeout_s=timeout_s, live=True, label=job.name)
        except subprocess.TimeoutExpired:
            stop_process(job.proc, grace_s=5)
            raise StepFailed(f"{job.name} did not finish within {timeout_s:.0f} s", log_path=job.log_path) from None
        self.jobs.remove(job)
        if code != 0:
            raise StepFailed(f"{job.name} exited with code {code}: {' '.join(job.argv)}", log_path=job.log_path)
        return job.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        """Raise :class:`StepFailed` naming the first long-running child that has died."""
        for child in self.children:
            if not child.alive:
                raise StepFailed(
                    f"{child.name} exited unexpectedly with code {child.proc.returncode}",
                    log_path=child.log_path,
                )

    def stop(self, child: Child, *, grace_s: float = 10.0) -> int | None:
        code = stop_process(child.proc, grace_s=grace_s)
        if child in self.children:
            self.children.remove(child)
        return code

    def stop_all(self, *, grace_s: float = 10.0) -> None:
        """SIGTERM every child's group at once (agents first), wait ``grace_s`` in all, SIGKILL the rest."""
        children = list(reversed(self.jobs + self.children))
        for child in children:
            if child.alive:
                _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in children:
            code = stop_process(child.proc, grace_s=max(0.1, deadline - time.monotonic()))
            log.debug("stopped %s (exit %s)", child.name, code)
        self.children.clear()
        self.jobs.clear()
