"""The optimizer's configuration: one frozen dataclass built once from the CLI.

Validation happens here, before any work starts, so a bad option never leaves
a half-built bundle: every problem raises :class:`~optimize.errors.InputError`
naming the option.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from models.bench import BenchConfig
from models.bundle import BundleError, parse_semver
from models.hardware import HARDWARE_CLASSES
from optimize.errors import InputError

__all__ = ["CalibMethod", "OptimizeConfig", "TARGET_ALIASES", "expand_targets", "DEFAULT_TARGETS"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
TARGET_ALIASES = {"cpu": ("cpu-x86_64", "cpu-aarch64"), "jetson": ("jetson-orin", "jetson-xavier", "jetson-nano")}
DEFAULT_TARGETS = ("cpu", "cuda", "jetson")


class CalibMethod(str, Enum):
    """INT8 calibration methods (ONNX Runtime's ``CalibrationMethod``)."""

    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


def expand_targets(targets: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``("cpu", "jetson-orin")`` → hardware classes, in :data:`HARDWARE_CLASSES` order."""
    wanted: set[str] = set()
    allowed = sorted(set(HARDWARE_CLASSES) | set(TARGET_ALIASES))
    for t in targets:
        t = t.strip()
        if t in TARGET_ALIASES:
            wanted.update(TARGET_ALIASES[t])
        elif t in HARDWARE_CLASSES:
            wanted.add(t)
        else:
            raise InputError(f"--targets: unknown target {t!r}; expected some of {allowed}")
    if not wanted:
        raise InputError(f"--targets: name at least one of {allowed}")
    return tuple(h for h in HARDWARE_CLASSES if h in wanted)


@dataclass(frozen=True)
class OptimizeConfig:
    """Everything one ``edge-optimize`` run needs; see ``edge-optimize --help``."""

    source: Path  # run directory, checkpoint .pt or its .json sidecar
    out: Path  # the bundle directory to create (must not exist, or be empty)
    name: str
    version: str
    targets: tuple[str, ...] = DEFAULT_TARGETS
    calib_samples: int = 128  # images drawn from the train split for INT8 calibration
    eval_samples: int = 300  # held-out images for the accuracy gates
    parity_samples: int = 16  # held-out images for the ONNX-vs-torch parity check
    parity_atol: float = 1e-3  # max |onnx - torch| on any output
    parity_min_cosine: float = 0.9999
    max_accuracy_drop: float = 1.0  # points (top-1 %, mAP@0.5 %)
    calib_methods: tuple[CalibMethod, ...] = (CalibMethod.MINMAX, CalibMethod.ENTROPY, CalibMethod.PERCENTILE)
    max_exclusion_rounds: int = 3  # retries of INT8 with more float nodes
    int8: bool = True
    fp16: bool = True
    simplify: bool = True  # onnxslim, kept only when parity holds
    opset: int = 17
    threads: int | None = None  # ONNX Runtime intra-op threads when measuring latency
    bench: BenchConfig = field(default_factory=lambda: BenchConfig(5, 0.0, 30, 1.0, 15.0))
    latency_headroom: float = 4.0  # gates: budget = measured p95 * headroom (slower devices)
    min_agreement: float = 0.9

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InputError(f"--name must match {_NAME.pattern} (lowercase, digits, . _ -), got {self.name!r}")
        try:
            parse_semver(self.version)
        except BundleError as e:
            raise InputError(f"--version must be a semantic version like 1.2.0, got {self.version!r}") from e
        object.__setattr__(self, "targets", expand_targets(self.targets))
        for key in ("calib_samples", "eval_samples", "parity_samples"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
        if not 0.0 <= self.max_accuracy_drop <= 100.0:
            raise InputError(f"--max-accuracy-drop must be within [0, 100] points, got {self.max_accuracy_drop}")
        if self.opset < 17:
            raise InputError(f"--opset must be >= 17, got {self.opset}")
        if not self.calib_methods:
            raise InputError("at least one calibration method is required")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be >= 1, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (paths and enums as strings) for the report."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, BenchConfig):
                value = dataclasses.asdict(value)
            elif isinstance(value, tuple):
                value = [v.value if isinstance(v, Enum) else v for v in value]
            out[f.name] = value
        return out
