"""Real multi-process training: 2 gloo workers on CPU, and an exact resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.training.conftest import TINY, cli, run_cli


def _metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_process_gloo_run_trains_and_writes_one_run_dir(ddp_run: Path) -> None:
    rows = _metrics(ddp_run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert all(0.0 <= r["top1"] <= 1.0 for r in rows)
    # the val metric counts every image once: 64 images -> multiples of 1/64
    assert all(abs(r["top1"] * 64 - round(r["top1"] * 64)) < 1e-9 for r in rows)
    state = torch.load(ddp_run / "checkpoints" / "last.pt", weights_only=True)
    assert state["sampler"]["num_replicas"] == 2 and state["epoch"] == 3
    assert not any(k.startswith("module.") for k in state["model"])  # DDP wrapper not saved
    assert len(list((ddp_run / "tb").iterdir())) >= 1
    assert (ddp_run / "curves.png").stat().st_size > 1000


def _wait_for_epoch(run: Path, epoch: int, proc: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    side = run / "checkpoints" / "last.json"
    while time.monotonic() < deadline:
        if side.exists():
            try:
                if json.loads(side.read_text())["epoch"] >= epoch:
                    return
            except (json.JSONDecodeError, KeyError):
                pass
        if proc.poll() is not None:  # type: ignore[attr-defined]
            pytest.fail(f"training exited early: {proc.communicate()[0][-3000:]}")  # type: ignore[attr-defined]
        time.sleep(0.05)
    pytest.fail(f"epoch {epoch} did not finish within {timeout}s")


def test_kill_9_then_resume_matches_the_uninterrupted_run(ddp_run: Path, tmp_path: Path) -> None:
    args = [
        *TINY,
        "--epochs",
        "3",
        "--nproc-per-node",
        "2",
        "--output",
        str(tmp_path),
        "--name",
        "killed",
    ]
    proc = cli(args, new_session=True)
    run = tmp_path / "killed"
    try:
        _wait_for_epoch(run, 1, proc, timeout=900)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers, no cleanup
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = json.loads((run / "checkpoints" / "last.json").read_text())["epoch"]
    assert done < 3, "the run finished before it could be killed; make epochs longer"

    code, log = run_cli(["--resume", str(run)])
    assert code == 0, log[-4000:]
    assert f"resumed {run}/checkpoints/last.pt at epoch {done}" in log

    ref, got = _metrics(ddp_run), _metrics(run)
    assert [r["epoch"] for r in got] == [1, 2, 3]
    for a, b in zip(ref, got, strict=True):
        assert b["top1"] == pytest.approx(a["top1"], abs=1e-9)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    sa = torch.load(ddp_run / "checkpoints" / "last.pt", weights_only=True)["model"]
    sb = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key, value in sa.items():
        if value.is_floating_point():
            torch.testing.assert_close(sb[key], value, rtol=1e-4, atol=1e-5, msg=key)
