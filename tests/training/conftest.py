"""Shared fixtures of the training tests: tiny real runs through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# a few seconds per epoch on a busy 2-core machine, big enough to learn something
TINY = [
    "--data", "synthetic-signs", "--image-size", "32", "--train-size", "192", "--val-size", "64",
    "--batch-size", "16", "--lr", "0.003", "--warmup-epochs", "0.5", "--no-progress", "--threads", "1",
]  # fmt: skip


def cli(args: list[str], *, timeout: float = 240, new_session: bool = False) -> subprocess.Popen[str]:
    """Start ``python -m training ARGS`` as a real process (its own session if asked)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,
    )


def run_cli(args: list[str], *, timeout: float = 900) -> tuple[int, str]:
    proc = cli(args)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"edge-train {args} did not finish in {timeout}s:\n{out[-3000:]}")
    return proc.returncode, out


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """In-process runs set torch's thread count (``--threads``); give it back after."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-process gloo run of 3 epochs (the reference for resume)."""
    out = tmp_path_factory.mktemp("runs")
    code, log = run_cli([*TINY, "--epochs", "3", "--nproc-per-node", "2", "--output", str(out), "--name", "ref"])
    assert code == 0, log[-4000:]
    return out / "ref"
