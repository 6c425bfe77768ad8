"""The training run: :func:`main` wires config, data, model, optimiser,
checkpoints and the run log around ``engine.train_one_epoch``/``evaluate``.

Runs in one process or as one DDP worker (started by torchrun or by
``training.distributed.launch``). Determinism: the model is initialised from
``seed``, the sampler shuffles from ``(seed, epoch)``, augmentation draws from
``(seed, epoch, index)`` and torch's generator is reseeded from
``(seed, epoch, rank)`` at every epoch start — so a run resumed from an epoch
checkpoint replays exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from models.datasets import open_dataset
from models.zoo import build_model, default_input_spec
from training import distributed as ddp
from training.checkpoint import code_version, load_checkpoint, resolve_checkpoint, save_checkpoint
from training.config import Optimizer, TrainConfig, write_config
from training.data import AugmentConfig, ClassificationData, DetectionData, detection_collate
from training.engine import StepConfig, evaluate, train_one_epoch
from training.errors import CheckpointError
from training.runlog import RunLog

__all__ = ["main", "main_metric", "run_worker", "worker_entry"]

log = logging.getLogger(__name__)


def main_metric(task: str) -> str:
    return "top1" if task == "classification" else "map50"


@dataclass
class _Data:
    train: DataLoader[Any]
    val: DataLoader[Any]
    sampler: DistributedSampler[Any]
    train_set: ClassificationData | DetectionData
    labels: tuple[str, ...]
    fingerprints: tuple[str, str]  # train, val
    val_size: int  # images, all ranks together


def _build_data(cfg: TrainConfig, env: ddp.DistEnv) -> _Data:
    spec = cfg.dataset_spec()
    train_reader, val_reader = open_dataset(spec, "train"), open_dataset(spec, "val")
    input_spec = default_input_spec(cfg.arch, cfg.task, cfg.image_size)
    wrap = ClassificationData if cfg.task == "classification" else DetectionData
    aug = AugmentConfig(enabled=cfg.augment, hflip=cfg.hflip)
    train_set = wrap(train_reader, input_spec, train=True, augment=aug, seed=cfg.seed)
    val_set = wrap(val_reader, input_spec, train=False, augment=aug, seed=cfg.seed)
    sampler: DistributedSampler[Any] = DistributedSampler(
        train_set,
        num_replicas=env.world_size,
        rank=env.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=len(train_set) >= env.world_size,
    )
    collate = detection_collate if cfg.task == "detection" else None
    common: dict[str, Any] = {
        "num_workers": cfg.workers,
        "collate_fn": collate,
        "pin_memory": env.device.type == "cuda",
        "persistent_workers": False,
    }
    # a trailing batch of one image would break BatchNorm: drop the remainder when there is a full batch
    full = len(train_set) // env.world_size >= cfg.batch_size
    train = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=full, **common)
    # every rank evaluates a disjoint shard with no padding: the metric counts each image once
    shard = Subset(val_set, list(range(env.rank, len(val_set), env.world_size)))
    val = DataLoader(shard, batch_size=cfg.batch_size, shuffle=False, **common)
    return _Data(
        train,
        val,
        sampler,
        train_set,
        tuple(train_reader.labels),
        (train_reader.fingerprint(), val_reader.fingerprint()),
        len(val_reader),
    )


def _build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # no decay on norms and biases
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer is Optimizer.SGD:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _build_scheduler(
    cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warmup, then cosine down to ``min_lr_ratio``."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / max(warmup, 1)
        progress = min(1.0, (step - warmup) / max(total - warmup, 1))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _run_dir(cfg: TrainConfig, env: ddp.DistEnv) -> Path:
    if cfg.resume:
        return resolve_checkpoint(cfg.resume)[0]
    name = cfg.name or f"{cfg.data}-{cfg.arch}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    name = str(ddp.broadcast_object(name, env))  # ranks may not agree on the clock
    return Path(cfg.output) / name


def _sidecar(cfg: TrainConfig, data: _Data, run_dir: Path, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
    spec = cfg.dataset_spec().to_dict()
    spec.update(cache_dir=None, fingerprint=data.fingerprints[1], train_fingerprint=data.fingerprints[0])
    return {
        "arch": cfg.arch,
        "task": cfg.task,
        "num_classes": len(data.labels),
        "labels": list(data.labels),
        "model_kwargs": {**cfg.model_kwargs, "image_size": cfg.image_size},
        "input": default_input_spec(cfg.arch, cfg.task, cfg.image_size).to_dict(),
        "metrics": {k: v for k, v in metrics.items() if k in ("top1", "map50", "map")},
        "main_metric": main_metric(cfg.task),
        "epoch": epoch,
        "dataset": spec,
        "run": str(run_dir),
        "code_version": code_version(),
    }


@dataclass
class _State:
    model: nn.Module  # unwrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    start_epoch: int = 0
    best: float = -1.0
    history: list[dict[str, Any]] | None = None


def _restore(cfg: TrainConfig, st: _State, env: ddp.DistEnv) -> None:
    if not cfg.resume:
        return
    _, ckpt = resolve_checkpoint(cfg.resume)
    state, meta = load_checkpoint(ckpt)
    if meta["arch"] != cfg.arch or meta["task"] != cfg.task:
        raise CheckpointError(
            f"cannot resume {ckpt}: it holds {meta['arch']}/{meta['task']}, the config asks for {cfg.arch}/{cfg.task}"
        )
    try:
        st.model.load_state_dict(state["model"])
        st.optimizer.load_state_dict(state["optimizer"])
        st.scheduler.load_state_dict(state["scheduler"])
        if st.scaler is not None and state.get("scaler"):
            st.scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume from {ckpt}: {e}") from e
    st.start_epoch, st.best = int(state["epoch"]), float(state["best_metric"])
    st.history = list(state.get("history", []))
    replicas = int(state.get("sampler", {}).get("num_replicas", env.world_size))
    if replicas != env.world_size:
        log.warning(
            "resuming with %d processes, the checkpoint used %d: the data order differs from an uninterrupted run",
            env.world_size,
            replicas,
        )
    if env.is_main:
        log.info(
            "resumed %s at epoch %d (best %s=%.4f)",
            ckpt,
            st.start_epoch,
            main_metric(cfg.task),
            st.best,
        )


def _save(
    cfg: TrainConfig,
    st: _State,
    data: _Data,
    run_dir: Path,
    epoch: int,
    row: dict[str, Any],
    env: ddp.DistEnv,
) -> None:
    metric = float(row[main_metric(cfg.task)])
    improved = metric > st.best
    st.best = max(st.best, metric)
    if not env.is_main:
        return
    state = {
        "model": st.model.state_dict(),
        "optimizer": st.optimizer.state_dict(),
        "scheduler": st.scheduler.state_dict(),
        "scaler": st.scaler.state_dict() if st.scaler is not None else {},
        "epoch": epoch,
        "rng": {
            "torch": torch.get_rng_state(),
            "scheme": "reseeded per epoch from (seed, epoch, rank)",
        },
        "sampler": {"seed": cfg.seed, "epoch": epoch, "num_replicas": env.world_size},
        "best_metric": st.best,
        "history": list(st.history or []) + [row],
    }
    sidecar = _sidecar(cfg, data, run_dir, epoch, row)
    ckpt_dir = run_dir / "checkpoints"
    if improved:
        save_checkpoint(ckpt_dir / "best.pt", state, sidecar)
    save_checkpoint(ckpt_dir / "last.pt", state, sidecar)


def _setup(cfg: TrainConfig, env: ddp.DistEnv, data: _Data) -> _State:
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.arch,
        cfg.task,
        len(data.labels),
        image_size=cfg.image_size,
        init_weights=cfg.init_weights if not cfg.resume else None,
        **cfg.model_kwargs,
    )
    if cfg.bn_momentum is not None:
        # torchvision's MobileNets use 0.01 (tuned for long ImageNet runs); on short runs the
        # running statistics would lag the weights and evaluation would look like chance
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.bn_momentum
    model.to(env.device)
    if env.device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = _build_optimizer(cfg, model)
    sched = _build_scheduler(cfg, opt, len(data.train))
    scaler = torch.amp.GradScaler("cuda") if (cfg.amp and env.device.type == "cuda") else None
    st = _State(model, opt, sched, scaler)
    _restore(cfg, st, env)
    return st


@record
def worker_entry(cfg_dict: dict[str, Any], verbose: bool = False) -> dict[str, Any]:
    """Entry point of a worker started by :func:`training.distributed.launch` (a fresh
    interpreter: the config arrives as a plain dict)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_worker(TrainConfig.from_dict(cfg_dict))


def run_worker(cfg: TrainConfig) -> dict[str, Any]:
    """Train in this process (one rank); returns the run summary on every rank."""
    env = ddp.init_distributed(device=cfg.device.value, threads=cfg.threads)
    try:
        return _train(cfg, env)
    finally:
        ddp.cleanup()


def _train(cfg: TrainConfig, env: ddp.DistEnv) -> dict[str, Any]:
    torch.backends.cudnn.benchmark = False
    data = _build_data(cfg, env)
    st = _setup(cfg, env, data)
    run_dir = _run_dir(cfg, env)
    if env.is_main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_config(cfg, run_dir / "config.yaml")
        log.info(
            "run %s: %s on %s (%d train / %d val images), %d process(es) on %s",
            run_dir,
            cfg.arch,
            cfg.data,
            len(data.train_set),
            data.val_size,
            env.world_size,
            env.device,
        )
    runlog = RunLog(run_dir if env.is_main else None, history=st.history)
    model: nn.Module = st.model
    if env.distributed:
        model = DistributedDataParallel(st.model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    step = StepConfig(
        task=cfg.task,
        clip_grad_norm=cfg.clip_grad_norm,
        label_smoothing=cfg.label_smoothing,
        amp=st.scaler is not None,
        channels_last=env.device.type == "cuda" and cfg.channels_last,
    )
    row: dict[str, Any] = {}
    for epoch in range(st.start_epoch, cfg.epochs):
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 101 + env.rank)
        data.sampler.set_epoch(epoch)
        data.train_set.set_epoch(epoch)
        stats = train_one_epoch(
            model,
            data.train,
            st.optimizer,
            st.scheduler,
            env=env,
            step=step,
            scaler=st.scaler,
            epoch=epoch,
            progress=cfg.progress,
        )
        metrics = evaluate(
            st.model,
            data.val,
            env=env,
            step=step,
            num_classes=len(data.labels),
            progress=cfg.progress,
        )
        row = {
            "epoch": epoch + 1,
            "train_loss": stats["loss"],
            "lr": stats["lr"],
            "images_per_s": stats["images_per_s"],
            "seconds": stats["seconds"],
            **metrics,
        }
        _save(cfg, st, data, run_dir, epoch + 1, row, env)
        st.history = list(st.history or []) + [row]
        runlog.epoch(row)
        if env.is_main:
            log.info(
                "epoch %d/%d: loss %.4f, %s, %.0f img/s",
                epoch + 1,
                cfg.epochs,
                stats["loss"],
                ", ".join(f"{k} {metrics[k]:.4f}" for k in metrics),
                stats["images_per_s"],
            )
    runlog.close()
    final = row or (st.history[-1] if st.history else {})
    return {
        "run_dir": str(run_dir),
        "epochs": cfg.epochs,
        "best": st.best,
        "main_metric": main_metric(cfg.task),
        "final": final,
    }


def _preflight(cfg: TrainConfig) -> None:
    """Fail fast in the launcher, with a clear message, before starting workers."""
    spec = cfg.dataset_spec()
    labels = open_dataset(spec, "train").labels
    open_dataset(spec, "val")
    if cfg.init_weights and not cfg.resume:
        build_model(
            cfg.arch,
            cfg.task,
            len(labels),
            image_size=cfg.image_size,
            init_weights=cfg.init_weights,
            **cfg.model_kwargs,
        )


def main(cfg: TrainConfig, *, verbose: bool = False) -> dict[str, Any]:
    """Train as ``cfg`` says: in this process, as a torchrun worker, or by launching
    ``cfg.nproc_per_node`` workers. Returns rank 0's run summary."""
    if ddp.in_worker_env() or (cfg.nproc_per_node == 1 and cfg.nnodes == 1):
        return run_worker(cfg)
    _preflight(cfg)
    log.info("launching %d worker(s) on node %d/%d", cfg.nproc_per_node, cfg.node_rank, cfg.nnodes)
    result = ddp.launch(
        worker_entry,
        (cfg.to_dict(), verbose),
        nproc_per_node=cfg.nproc_per_node,
        nnodes=cfg.nnodes,
        node_rank=cfg.node_rank,
        rdzv_endpoint=cfg.rdzv_endpoint,
        rdzv_id=cfg.rdzv_id,
    )
    return result if isinstance(result, dict) else {}
