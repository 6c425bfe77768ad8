"""Fixtures for optimizer tests: one really trained small checkpoint per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.optimize.checkpoints import FAST_OPTIMIZE, dataset_spec, train_classifier, write_run


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Two cores shared by many processes: more torch threads only spin against each other."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MobileNetV3-small trained for a few steps on 32x32 synthetic signs (contract §1 run dir)."""
    root = tmp_path_factory.mktemp("run")
    spec = dataset_spec(image_size=32, train_size=256, val_size=96, cache_dir=str(root / "cache"))
    model, info = train_classifier("mobilenet_v3_small", spec, steps=25, batch=32)
    return write_run(root / "signs", "mobilenet_v3_small", model, info, spec)


@pytest.fixture(scope="session")
def baseline_bundle(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """signs@1.0.0 optimized from ``trained_run`` for the CPU classes: the release a new one replaces."""
    from optimize.__main__ import main

    out = tmp_path_factory.mktemp("baseline") / "signs-1.0.0"
    assert (
        main(
            [
                str(trained_run),
                "--out",
                str(out),
                "--name",
                "signs",
                "--version",
                "1.0.0",
                "--targets",
                "cpu",
                *FAST_OPTIMIZE,
            ]
        )
        == 0
    )
    return out
