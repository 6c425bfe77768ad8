"""One training epoch and one evaluation pass, with explicit inputs.

No files are written here and nothing is printed except rank 0's tqdm bar;
the caller decides what to keep. Loss and metric values are reduced over all
ranks, so every rank returns the same numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.distributed import DistEnv, all_gather_objects, all_reduce_sum
from training.errors import TrainingError
from training.metrics import coco_map, decode_detections, top1_counts

__all__ = ["StepConfig", "train_one_epoch", "evaluate"]


@dataclass(frozen=True)
class StepConfig:
    task: str  # classification | detection
    clip_grad_norm: float | None = None
    label_smoothing: float = 0.0
    amp: bool = False  # effective (CUDA only)
    channels_last: bool = False


def _to_device(images: torch.Tensor, env: DistEnv, step: StepConfig) -> torch.Tensor:
    images = images.to(env.device, non_blocking=True)
    if step.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def _loss(model: nn.Module, batch: Any, env: DistEnv, step: StepConfig) -> tuple[torch.Tensor, int]:
    images, targets = batch
    images = _to_device(images, env, step)
    with torch.autocast(env.device.type, enabled=step.amp):
        if step.task == "classification":
            logits = model(images)
            loss = F.cross_entropy(logits.float(), targets.to(env.device), label_smoothing=step.label_smoothing)
        else:
            tgt = [{"boxes": t["boxes"].to(env.device), "labels": t["labels"].to(env.device)} for t in targets]
            loss = sum(model(images, tgt).values())
    return loss, images.shape[0]


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    env: DistEnv,
    step: StepConfig,
    scaler: torch.amp.GradScaler | None = None,
    epoch: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Train one pass over ``loader``; returns ``{"loss", "lr", "images", "seconds", "images_per_s"}``."""
    model.train()
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1} train", leave=False, disable=not (progress and env.is_main))
    for batch in bar:
        loss, n = _loss(model, batch, env, step)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise TrainingError(f"loss became {loss_value} at epoch {epoch + 1}: lower the lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.unscale_(optimizer)
        else:
            loss.backward()  # type: ignore[no-untyped-call]
        if step.clip_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), step.clip_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        total_loss += loss_value * n
        seen += n
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    seconds = time.perf_counter() - start
    loss_sum, images, max_seconds = all_reduce_sum([total_loss, float(seen), seconds], env)
    max_seconds = max_seconds / env.world_size  # mean wall time of the ranks
    return {
        "loss": loss_sum / max(images, 1.0),
        "lr": float(optimizer.param_groups[0]["lr"]),
        "images": images,
        "seconds": max_seconds,
        "images_per_s": images / max(max_seconds, 1e-9),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    env: DistEnv,
    step: StepConfig,
    num_classes: int,
    progress: bool = False,
) -> dict[str, float]:
    """Evaluate on this rank's shard of the val set and combine all ranks.

    classification → ``{"top1", "val_loss"}``; detection → ``{"map50", "map"}``.
    """
    model.eval()
    bar = tqdm(loader, desc="eval", leave=False, disable=not (progress and env.is_main))
    if step.task == "classification":
        correct = total = 0
        loss_sum = 0.0
        for images, labels in bar:
            with torch.autocast(env.device.type, enabled=step.amp):
                logits = model(_to_device(images, env, step)).float()
            labels = labels.to(env.device)
            c, t = top1_counts(logits, labels)
            correct, total = correct + c, total + t
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        c_all, t_all, l_all = all_reduce_sum([float(correct), float(total), loss_sum], env)
        return {"top1": c_all / max(t_all, 1.0), "val_loss": l_all / max(t_all, 1.0)}
    gts: list[tuple[int, np.ndarray, np.ndarray]] = []
    preds: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    for images, targets in bar:
        with torch.autocast(env.device.type, enabled=step.amp):
            boxes, scores = model(_to_device(images, env, step))
        for t, (b, s, lab) in zip(targets, decode_detections(boxes.float(), scores.float()), strict=True):
            sx, sy, px, py = t["transform"].tolist()
            scale = np.array([sx, sy, sx, sy], np.float32)
            pad = np.array([px, py, px, py], np.float32)
            image_id = int(t["image_id"])
            gts.append((image_id, (t["boxes"].numpy() - pad) / scale, t["labels"].numpy()))
            preds.append((image_id, (b - pad) / scale, s, lab))
    all_gts = [g for part in all_gather_objects(gts, env) for g in part]
    all_preds = [p for part in all_gather_objects(preds, env) for p in part]
    return coco_map(all_gts, all_preds, num_classes)
