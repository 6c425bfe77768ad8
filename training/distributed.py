"""Distributed-data-parallel helpers: process-group setup from the torchrun
environment, metric reduction, and the elastic launcher behind
``--nproc-per-node``.

gloo on CPU, NCCL on CUDA. With no torchrun environment (``WORLD_SIZE``
unset) everything degrades to a single process and the collectives are
identities, so the training loop has one code path. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import torch
import torch.distributed as dist

from training.errors import LaunchError

__all__ = [
    "DistEnv",
    "in_worker_env",
    "init_distributed",
    "cleanup",
    "all_reduce_sum",
    "all_gather_objects",
    "broadcast_object",
    "launch",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def in_worker_env() -> bool:
    """True when started by torchrun / the elastic launcher (rank variables are set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ and "LOCAL_RANK" in os.environ


def init_distributed(*, device: str = "auto", threads: int | None = None) -> DistEnv:
    """Join the process group described by the torchrun environment (if any).

    ``device``: ``auto`` | ``cpu`` | ``cuda``. Sets torch's intra-op threads to
    ``threads`` or (cores / processes on this node) so workers do not fight.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise LaunchError("device 'cuda' was requested but torch sees no CUDA GPU")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    else:
        dev = torch.device("cpu")
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // max(local_world, 1)))
    cv2.setNumThreads(1)  # data loading runs beside the math; keep it from oversubscribing
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        try:
            dist.init_process_group(backend=backend, init_method="env://")
        except (RuntimeError, ValueError) as e:
            raise LaunchError(f"rank {rank}: cannot join the {backend} process group: {e}") from e
    return DistEnv(rank, world, local_rank, local_world, dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launch(
    entrypoint: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "edgefleet-train",
) -> Any:
    """Run ``entrypoint(*args)`` in ``nproc_per_node`` workers via torch's elastic launcher.

    Single node without an endpoint: a private c10d rendezvous on a free local
    port (like ``torchrun --standalone``). Returns rank 0's return value;
    raises :class:`LaunchError` naming the failed rank.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    standalone = nnodes == 1 and not rdzv_endpoint
    config = LaunchConfig(
        min_nodes=nnodes,
        max_nodes=nnodes,
        nproc_per_node=nproc_per_node,
        run_id=f"{rdzv_id}-{uuid.uuid4().hex[:8]}" if standalone else rdzv_id,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0" if standalone else str(rdzv_endpoint),
        rdzv_configs={"rank": node_rank} if not standalone else {},
        max_restarts=0,
        start_method="spawn",
        monitor_interval=0.2,
    )
    try:
        results = elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as e:
        failures = "; ".join(f"rank {r}: {f.message or f.exitcode}" for r, f in e.failures.items())
        raise LaunchError(f"training worker(s) failed: {failures}") from e
    except (RuntimeError, ValueError) as e:
        raise LaunchError(f"the distributed launcher failed: {e}") from e
    return results.get(0) if isinstance(results, dict) else results
