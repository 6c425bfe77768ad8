"""The run configuration: :class:`TrainConfig`, built once from defaults, an
optional YAML file and CLI overrides, then written as ``config.yaml`` into the
run directory.

Precedence (lowest first): dataclass defaults, the resumed run's
``config.yaml`` (with ``--resume``), the ``--config`` YAML file, CLI flags.
This module parses and validates; it does not touch the run directory except
through :func:`write_config`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from models.archs import ARCHS
from models.datasets import DatasetName, DatasetSpec, dataset_task
from models.fsio import write_atomic
from training.errors import TrainingConfigError

__all__ = [
    "Optimizer",
    "Device",
    "TrainConfig",
    "load_yaml",
    "merge",
    "write_config",
    "read_run_config",
]


class Optimizer(str, Enum):
    ADAMW = "adamw"
    SGD = "sgd"


class Device(str, Enum):
    AUTO = "auto"  # CUDA when available, else CPU
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; ``to_dict`` is what ``config.yaml`` holds."""

    # data
    data: str = DatasetName.SYNTHETIC_SIGNS.value
    data_root: str | None = None
    ann_file: str | None = None
    image_size: int = 64  # pixels: synthetic generation size and network input size
    train_size: int = 5000  # synthetic images per epoch
    val_size: int = 1000  # synthetic val images
    val_fraction: float = 0.2  # real data without explicit splits
    cache_dir: str | None = None  # on-disk cache of generated samples
    augment: bool = True
    hflip: bool = False  # off by default: it turns a left-turn sign into a right-turn one
    # model
    arch: str = "mobilenet_v3_small"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init_weights: str | None = None
    # optimisation
    epochs: int = 10
    batch_size: int = 64  # per process
    optimizer: Optimizer = Optimizer.ADAMW
    lr: float = 2e-3  # peak, for the global batch
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine floor, relative to lr
    label_smoothing: float = 0.0  # classification only
    bn_momentum: float | None = 0.1  # BatchNorm running-stat momentum; None keeps the arch's own
    clip_grad_norm: float | None = 5.0  # None: no clipping
    amp: bool = True  # CUDA only
    channels_last: bool = True  # CUDA only
    seed: int = 0
    # runtime
    device: Device = Device.AUTO
    workers: int = 0  # DataLoader worker processes per training process
    threads: int | None = None  # torch threads per process; None: cores / processes
    output: str = "runs"
    name: str | None = None  # run directory name; None: <data>-<arch>-<timestamp>
    resume: str | None = None  # run directory or checkpoint to continue
    progress: bool = True  # tqdm bars on rank 0
    # distributed launch
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # host:port of the c10d rendezvous (multi-node)
    rdzv_id: str = "edgefleet-train"

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def task(self) -> str:
        return dataset_task(self.dataset_spec())

    def dataset_spec(self) -> DatasetSpec:
        return DatasetSpec(
            name=self.data,
            root=self.data_root,
            ann_file=self.ann_file,
            seed=self.seed,
            image_size=self.image_size,
            train_size=self.train_size,
            val_size=self.val_size,
            val_fraction=self.val_fraction,
            cache_dir=self.cache_dir,
        )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, Enum):
                out[key] = value.value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from a mapping; an unknown key or a wrong type raises :class:`TrainingConfigError`."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise TrainingConfigError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            kwargs[key] = _coerce(key, value, fields[key].type, source)
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as e:
            if isinstance(e, TrainingConfigError):
                raise
            raise TrainingConfigError(f"{source}: {e}") from e


_ENUMS: dict[str, type[Enum]] = {"optimizer": Optimizer, "device": Device}


def _coerce(key: str, value: Any, typ: Any, source: str) -> Any:
    if key in _ENUMS:
        allowed = [m.value for m in _ENUMS[key]]
        if value not in allowed and not isinstance(value, _ENUMS[key]):
            raise TrainingConfigError(f"{source}: {key} must be one of {allowed}, got {value!r}")
        return _ENUMS[key](value)
    t = str(typ)
    if value is None:
        if "None" not in t:
            raise TrainingConfigError(f"{source}: {key} must not be null")
        return None
    if t.startswith("int") and (isinstance(value, bool) or not isinstance(value, int)):
        raise TrainingConfigError(f"{source}: {key} must be an int, got {value!r}")
    if t.startswith("float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TrainingConfigError(f"{source}: {key} must be a number, got {value!r}")
    if t.startswith("float"):
        return float(value)
    if t == "bool" and not isinstance(value, bool):
        raise TrainingConfigError(f"{source}: {key} must be true or false, got {value!r}")
    if t.startswith("str") and not isinstance(value, str):
        raise TrainingConfigError(f"{source}: {key} must be a string, got {value!r}")
    if t.startswith("dict") and not isinstance(value, Mapping):
        raise TrainingConfigError(f"{source}: {key} must be a mapping, got {value!r}")
    return dict(value) if isinstance(value, Mapping) else value


def _validate(c: TrainConfig) -> None:
    allowed = [n.value for n in DatasetName]
    if c.data not in allowed:
        raise TrainingConfigError(f"data must be one of {allowed}, got {c.data!r}")
    if c.arch not in ARCHS:
        raise TrainingConfigError(f"arch must be one of {sorted(ARCHS)}, got {c.arch!r}")
    positive = ("image_size", "epochs", "batch_size", "nproc_per_node", "nnodes")
    for key in positive:
        if getattr(c, key) < 1:
            raise TrainingConfigError(f"{key} must be >= 1, got {getattr(c, key)}")
    if c.bn_momentum is not None and not 0 < c.bn_momentum <= 1:
        raise TrainingConfigError(f"bn_momentum must be in (0, 1] or null, got {c.bn_momentum}")
    if c.lr <= 0:
        raise TrainingConfigError(f"lr must be > 0, got {c.lr}")
    if c.warmup_epochs < 0 or not 0 <= c.min_lr_ratio <= 1:
        raise TrainingConfigError("warmup_epochs must be >= 0 and min_lr_ratio in [0, 1]")
    if c.clip_grad_norm is not None and c.clip_grad_norm <= 0:
        raise TrainingConfigError(f"clip_grad_norm must be > 0 or null, got {c.clip_grad_norm}")
    if c.workers < 0 or (c.threads is not None and c.threads < 1):
        raise TrainingConfigError("workers must be >= 0 and threads >= 1")
    if not 0 <= c.node_rank < c.nnodes:
        raise TrainingConfigError(f"node_rank must be in [0, nnodes), got {c.node_rank} with nnodes={c.nnodes}")
    if c.nnodes > 1 and not c.rdzv_endpoint:
        raise TrainingConfigError("a multi-node run (nnodes > 1) needs rdzv_endpoint=host:port")
    task = dataset_task(c.dataset_spec())  # also validates the dataset fields
    if task not in ARCHS[c.arch].tasks:
        raise TrainingConfigError(
            f"arch {c.arch!r} does not support the {task} task of dataset {c.data!r} "
            f"(archs for {task}: {sorted(a for a, i in ARCHS.items() if task in i.tasks)})"
        )


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping of config keys; errors name the file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise TrainingConfigError(f"config file {p} does not exist") from e
    except (OSError, yaml.YAMLError) as e:
        raise TrainingConfigError(f"config file {p} is not readable YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainingConfigError(f"config file {p}: expected a mapping of keys, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def merge(*layers: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Later layers override earlier ones; ``None`` values in a layer mean "not set"."""
    out: dict[str, Any] = {}
    for layer in layers:
        out.update(layer)
    return TrainConfig.from_dict(out, source=source)


def write_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML, atomically."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=True)
    write_atomic(path, text.encode("utf-8"))


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The ``config.yaml`` of an existing run (for ``--resume``)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise TrainingConfigError(f"cannot resume: {path} does not exist (is {run_dir} a run directory?)")
    return load_yaml(path)
