"""Checkpoints + sidecars exactly per contracts §1 (read from a real 2-process run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from models.bundle import InputSpec
from models.datasets import DatasetSpec, open_dataset
from models.zoo import build_model
from training.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from training.errors import CheckpointError

CONTRACT_KEYS = {
    "format", "arch", "task", "num_classes", "labels", "model_kwargs", "input", "metrics",
    "main_metric", "epoch", "dataset", "run", "code_version", "created_at", "checkpoint_sha256",
}  # fmt: skip


def test_run_dir_layout_matches_the_contract(ddp_run: Path) -> None:
    for rel in (
        "config.yaml",
        "metrics.jsonl",
        "tb",
        "curves.png",
        "checkpoints/last.pt",
        "checkpoints/last.json",
        "checkpoints/best.pt",
        "checkpoints/best.json",
    ):
        assert (ddp_run / rel).exists(), rel
    cfg = yaml.safe_load((ddp_run / "config.yaml").read_text())
    assert cfg["nproc_per_node"] == 2 and cfg["epochs"] == 3
    assert not list((ddp_run / "checkpoints").glob(".*"))


def test_checkpoint_loads_weights_only_and_sidecar_rebuilds_everything(ddp_run: Path) -> None:
    path = ddp_run / "checkpoints" / "best.pt"
    state = torch.load(path, weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "sampler", "best_metric"} <= set(state)
    side = json.loads(path.with_suffix(".json").read_text())
    assert set(side) == CONTRACT_KEYS
    assert side["format"] == "edgefleet.checkpoint/1"
    assert side["task"] == "classification" and side["main_metric"] == "top1"
    assert side["metrics"]["top1"] == pytest.approx(state["best_metric"])
    assert side["num_classes"] == len(side["labels"]) == 10
    assert side["created_at"].endswith("Z") and side["code_version"].startswith("0.1.0+")
    # what optimize does with it: rebuild the model, the input spec and the val data
    model = build_model(side["arch"], side["task"], side["num_classes"], **side["model_kwargs"])
    model.load_state_dict(state["model"])
    spec = InputSpec.from_dict(side["input"])
    assert spec.height == spec.width == 32
    ds = open_dataset(DatasetSpec.from_dict(side["dataset"]), "val")
    assert ds.fingerprint() == side["dataset"]["fingerprint"] and len(ds) == 64


def test_tampered_checkpoint_is_refused(ddp_run: Path, tmp_path: Path) -> None:
    for suffix in (".pt", ".json"):
        (tmp_path / f"last{suffix}").write_bytes((ddp_run / "checkpoints" / f"last{suffix}").read_bytes())
    state, meta = load_checkpoint(tmp_path / "last.pt")
    assert meta["epoch"] == state["epoch"] == 3
    with open(tmp_path / "last.pt", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_checkpoint(tmp_path / "last.pt")
    (tmp_path / "last.json").write_text("{}")
    with pytest.raises(CheckpointError, match="format must be"):
        load_checkpoint(tmp_path / "last.pt")


def test_save_is_atomic_and_refuses_incomplete_sidecars(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="lacks field"):
        save_checkpoint(tmp_path / "x.pt", {"model": {}}, {"arch": "resnet18"})
    assert list(tmp_path.iterdir()) == []


def test_resume_target_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no epoch has finished"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="expected a run directory or a .pt"):
        resolve_checkpoint(tmp_path / "nothing")
