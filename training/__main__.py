"""``edge-train`` / ``python -m training``: train a model, write a run directory.

Examples::

    edge-train --config training/configs/signs.yaml --nproc-per-node 2
    edge-train --data imagefolder --data-root ~/signs --arch resnet18 --epochs 20
    edge-train --resume runs/signs-mobilenet_v3_small-20261127-101500
    torchrun --nproc_per_node=2 -m training --config training/configs/demo-signs.yaml

Exit codes: 0 done, 1 training failed, 2 bad input (config, data, weights,
checkpoint), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from models.archs import ARCHS, ZooError
from models.datasets import DatasetError
from training.config import Device, Optimizer, TrainConfig, load_yaml, merge, read_run_config
from training.errors import LaunchError, TrainingConfigError, TrainingError

__all__ = ["build_parser", "config_from_args", "main"]

log = logging.getLogger("training")

_EPILOG = """\
precedence: defaults < the resumed run's config.yaml < --config FILE < flags.
distributed: --nproc-per-node N starts N workers itself (gloo on CPU, NCCL on
CUDA); `torchrun --nproc_per_node=N -m training ...` works too. Multi-node:
run the same command on every node with --nnodes, --node-rank and
--rdzv-endpoint HOST:PORT (c10d rendezvous on node 0).
outputs: <output>/<name>/{config.yaml, metrics.jsonl, tb/, curves.png,
checkpoints/{last,best}.{pt,json}}.
exit codes: 0 done, 1 training failed, 2 bad input, 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-train",
        description="Train a classification or detection model (DDP on CPU or GPU) "
        "and write checkpoints that edge-optimize turns into bundles.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--config", metavar="YAML", help="YAML file of config keys (see training/configs/)")
    a("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    a("-v", "--verbose", action="store_true", help="debug logging")
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        choices=["synthetic-signs", "synthetic-scenes", "imagefolder", "coco"],
        help="dataset (default synthetic-signs)",
    )
    g.add_argument("--data-root", metavar="DIR", help="imagefolder root or COCO image dir")
    g.add_argument("--ann-file", metavar="JSON", help="COCO annotations; '{split}' is replaced by train/val")
    g.add_argument("--image-size", type=int, metavar="PX", help="network input (and synthetic image) size")
    g.add_argument("--train-size", type=int, metavar="N", help="synthetic training images")
    g.add_argument("--val-size", type=int, metavar="N", help="synthetic validation images")
    g.add_argument("--val-fraction", type=float, help="val share of real data without train/val split")
    g.add_argument("--cache-dir", metavar="DIR", help="cache generated synthetic samples here")
    g.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="augment training images",
    )
    g.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal flips",
    )
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=sorted(ARCHS), help="architecture (default mobilenet_v3_small)")
    g.add_argument(
        "--model-kwargs",
        metavar="JSON",
        help='extra build_model arguments, e.g. \'{"backbone": "mobilenet_v3_large"}\'',
    )
    g.add_argument("--init-weights", metavar="PT", help="start from this state_dict / checkpoint")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="per process")
    g.add_argument("--optimizer", choices=[o.value for o in Optimizer])
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--min-lr-ratio", type=float, help="cosine floor as a fraction of --lr")
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--bn-momentum", type=float, help="BatchNorm running-stat momentum (default 0.1)")
    g.add_argument("--clip-grad-norm", type=float, help="max gradient norm; 0 disables")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (CUDA)")
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC memory (CUDA)",
    )
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("run")
    g.add_argument("--device", choices=[d.value for d in Device])
    g.add_argument("--workers", type=int, help="DataLoader workers per process")
    g.add_argument("--threads", type=int, help="torch threads per process (default cores / processes)")
    g.add_argument("--output", metavar="DIR", help="parent of run directories (default runs)")
    g.add_argument("--name", help="run directory name (default <data>-<arch>-<time>)")
    g.add_argument("--resume", metavar="RUN_OR_PT", help="continue a run directory (or a .pt checkpoint)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="tqdm bars")
    g = p.add_argument_group("distributed")
    g.add_argument("--nproc-per-node", type=int, metavar="N", help="worker processes on this node")
    g.add_argument("--nnodes", type=int, help="number of nodes")
    g.add_argument("--node-rank", type=int, help="this node's rank (0 .. nnodes-1)")
    g.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="c10d rendezvous (multi-node)")
    g.add_argument("--rdzv-id", help="job id shared by all nodes")
    return p


_NOT_CONFIG = {"config", "print_config", "verbose"}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Resolve defaults < resumed run < --config < flags into a :class:`TrainConfig`."""
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG and v is not None}
    if "model_kwargs" in flags:
        try:
            flags["model_kwargs"] = json.loads(flags["model_kwargs"])
        except json.JSONDecodeError as e:
            raise TrainingConfigError(f"--model-kwargs must be a JSON object: {e}") from e
    if flags.get("clip_grad_norm") == 0:
        flags["clip_grad_norm"] = None
    layers: list[dict[str, Any]] = []
    if args.resume:
        from training.checkpoint import resolve_checkpoint  # imports torch: only when resuming

        layers.append(read_run_config(resolve_checkpoint(args.resume)[0]))
    if args.config:
        layers.append(load_yaml(args.config))
    layers.append(flags)
    return merge(*layers, source=args.config or "config")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        cfg = config_from_args(args)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=True), end="")
            return 0
        from training import train  # torch is imported here, not for --help or a bad flag

        summary = train.main(cfg, verbose=args.verbose)
    except (TrainingConfigError, DatasetError, ZooError) as e:
        log.error("%s", e)
        return 2
    except LaunchError as e:
        log.error("%s", e)
        return 1
    except TrainingError as e:  # checkpoint problems are bad input; anything else failed training
        log.error("%s", e)
        return 2 if type(e).__name__ == "CheckpointError" else 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    if summary and os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 only
        final = summary.get("final", {})
        metric = summary.get("main_metric", "")
        print(
            f"run {summary['run_dir']}: {metric} {final.get(metric, float('nan')):.4f} "
            f"(best {summary['best']:.4f}) after {final.get('epoch', 0)} epoch(s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
