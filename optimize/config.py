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

__all__ = [
    "CalibMethod",
    "InputFormChoice",
    "OptimizeConfig",
    "TARGET_ALIASES",
    "expand_targets",
    "DEFAULT_TARGETS",
    "parse_release",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
TARGET_ALIASES = {"cpu": ("cpu-x86_64", "cpu-aarch64"), "jetson": ("jetson-orin", "jetson-xavier", "jetson-nano")}
DEFAULT_TARGETS = ("cpu", "cuda", "jetson")


class InputFormChoice(str, Enum):
    """Which input forms ``--input-form`` builds (see :mod:`optimize.frame_input`).

    ``both``: every variant plus its frame-form twin (``onnx-fp32`` and ``onnx-fp32-frame``, ...),
    the selection deciding per hardware class. ``tensor``: the tensor form only, for fleets whose
    agents predate ``Variant.input_form``. The tensor-form FP32 always ships: it is every class's
    fallback.
    """

    TENSOR = "tensor"
    BOTH = "both"


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


def parse_release(text: str, *, option: str = "--baseline-release") -> tuple[str, str]:
    """``"signs@1.0.0"`` → ``("signs", "1.0.0")``; raises :class:`InputError`."""
    name, sep, version = text.partition("@")
    if not sep or not _NAME.match(name):
        raise InputError(f"{option} must be NAME@VERSION like signs@1.0.0, got {text!r}")
    try:
        parse_semver(version)
    except BundleError as e:
        raise InputError(f"{option} must be NAME@VERSION with a semantic version, got {text!r}") from e
    return name, version


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
    threads: int | None = None  # ONNX Runtime intra-op threads for accuracy runs (timing uses one)
    # timing: warm-up queries, then round-robin rounds; min_queries = rounds, durations per variant
    bench: BenchConfig = field(default_factory=lambda: BenchConfig(5, 0.0, 30, 1.0, 15.0))
    min_speedup: float = 1.1  # a variant beats FP32 only when its speedup's lower bound clears this
    speedup_confidence: float = 0.95  # two-sided confidence of the bootstrap speedup interval
    latency_headroom: float = 4.0  # gates: budget = measured p95 * headroom (slower devices)
    latency_budget_ms: float | None = None  # gates: the p95 budget itself, instead of the headroom rule
    min_agreement: float = 0.5  # gates: floor under every agreement expectation
    baselines: tuple[Path, ...] = ()  # --baseline bundle directories (the releases this one replaces)
    baseline_release: str | None = None  # --baseline-release NAME@VERSION, fetched through TUF
    server: str | None = None  # --server URL of the OTA server serving --baseline-release
    trusted_root: Path | None = None  # --trusted-root: the image repository's pinned root.json
    calib_data: Path | None = None  # --calib-data: ImageFolder root or a flat directory of frames
    input_form: InputFormChoice = field(default_factory=lambda: InputFormChoice.BOTH)  # --input-form

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
        if not 1.0 <= self.min_speedup <= 10.0:
            raise InputError(f"--min-speedup must be within [1, 10], got {self.min_speedup}")
        if not 0.5 <= self.speedup_confidence < 1.0:
            raise InputError(f"speedup_confidence must be within [0.5, 1), got {self.speedup_confidence}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise InputError(f"min_agreement must be within [0, 1], got {self.min_agreement}")
        if self.latency_budget_ms is not None and not 0.0 < self.latency_budget_ms <= 60_000.0:
            raise InputError(f"--latency-budget-ms must be within (0, 60000], got {self.latency_budget_ms}")
        self._check_baseline_release()

    def _check_baseline_release(self) -> None:
        given = {"--server": self.server, "--trusted-root": self.trusted_root}
        if self.baseline_release is None:
            extra = [k for k, v in given.items() if v is not None]
            if extra:
                raise InputError(f"{' and '.join(extra)} only go with --baseline-release NAME@VERSION")
            return
        parse_release(self.baseline_release)
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise InputError(f"--baseline-release {self.baseline_release} needs {' and '.join(missing)}")
        if not str(self.server).startswith(("http://", "https://")):
            raise InputError(f"--server must be an http(s) URL, got {self.server!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (paths and enums as strings) for the report."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, BenchConfig):
                value = dataclasses.asdict(value)
            elif isinstance(value, Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = [v.value if isinstance(v, Enum) else str(v) if isinstance(v, Path) else v for v in value]
            out[f.name] = value
        return out
