"""The bundle contract: the one thing that passes between stages.

A bundle is a directory holding ``bundle.json`` (the manifest) and the model
files it names. The manifest is canonical JSON, versioned by ``schema`` and
validated strictly on load: an unknown schema, a missing or mistyped field, a
bad hash or an unknown enum value raises :class:`BundleError` naming the field
(``variants[1].sha256``).

Standard library only: the agent and the server import this module, and a
vehicle runs it with nothing but ONNX Runtime installed.

This module does not pick variants for hardware (see :mod:`models.hardware`)
and does not run models (see :mod:`models.runtime`).
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from models.errors import ModelsError
from models.fsio import write_atomic

__all__ = [
    "SCHEMA",
    "MANIFEST_NAME",
    "BundleError",
    "Task",
    "Format",
    "Precision",
    "Layout",
    "ColorOrder",
    "ResizeMode",
    "InputForm",
    "DecoderKind",
    "InputSpec",
    "TensorSpec",
    "DecoderSpec",
    "OutputSpec",
    "HardwareRequirements",
    "Measurement",
    "Variant",
    "SpeedupEvidence",
    "SelectionEntry",
    "ClassAgreement",
    "AgreementExpectation",
    "GATE_STRICTER",
    "Gates",
    "Provenance",
    "Manifest",
    "canonical_json",
    "sha256_file",
    "parse_semver",
    "load_manifest",
    "read_bundle",
    "write_bundle",
    "verify_bundle",
]

SCHEMA = "edgefleet.bundle/2"  # /2: speedup evidence, agreement expectations, sequential-gate settings
MANIFEST_NAME = "bundle.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BundleError(ModelsError, ValueError):
    """A manifest or bundle directory is invalid; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class Task(str, Enum):
    CLASSIFICATION = "classification"
    DETECTION = "detection"
    SEGMENTATION = "segmentation"


class Format(str, Enum):
    ONNX = "onnx"
    TENSORRT_ENGINE = "tensorrt-engine"


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Layout(str, Enum):
    NCHW = "NCHW"
    NHWC = "NHWC"


class ColorOrder(str, Enum):
    RGB = "RGB"
    BGR = "BGR"


class ResizeMode(str, Enum):
    STRETCH = "stretch"
    LETTERBOX = "letterbox"
    CENTER_CROP = "center-crop"


class InputForm(str, Enum):
    """What a variant's graph takes as input.

    ``tensor``: the network input the :class:`InputSpec` describes (float, its layout,
    colour order and normalisation, done by :mod:`models.preprocess`). ``frame``: the camera
    frame resized to the input size, uint8 BGR ``[N, H, W, 3]`` as OpenCV decodes it; the
    graph itself casts, reorders the channels, normalises and transposes
    (:meth:`InputSpec.frame_spec`). The resize (letterbox, center crop) stays outside either way.
    """

    TENSOR = "tensor"
    FRAME = "frame"


class DecoderKind(str, Enum):
    TOPK = "topk"
    BOXES = "boxes"
    MASKS = "masks"


# --------------------------------------------------------------------------- helpers

E = TypeVar("E", bound=Enum)
T = TypeVar("T")


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    buf = bytearray(chunk)  # one reused buffer: no allocation per chunk
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def parse_semver(version: str, *, where: str = "version") -> tuple[int, int, int, str]:
    """``"1.2.3-rc.1"`` → ``(1, 2, 3, "rc.1")``; raises :class:`BundleError`."""
    m = _SEMVER.match(version) if isinstance(version, str) else None
    if not m:
        raise BundleError(f"must be a semantic version like 1.2.0, got {version!r}", field=where)
    return int(m[1]), int(m[2]), int(m[3]), m[4] or ""


def semver_key(version: str) -> tuple[int, int, int, int, str]:
    """Sort key: pre-releases sort before the release they precede."""
    major, minor, patch, pre = parse_semver(version)
    return major, minor, patch, 0 if pre else 1, pre


class _Reader:
    """Typed field access on a JSON object, with errors that name the field path."""

    def __init__(self, data: Any, path: builtins.str) -> None:
        if not isinstance(data, Mapping):
            raise BundleError(f"expected an object, got {type(data).__name__}", field=path or None)
        self.data = data
        self.path = path

    def _p(self, key: builtins.str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: builtins.str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: builtins.str, *, optional: builtins.bool = False) -> Any:
        if key not in self.data or (self.data[key] is None and not optional):
            if optional:
                return None
            raise BundleError("missing required field", field=self._p(key))
        return self.data[key]

    def typed(self, key: builtins.str, types: tuple[type, ...], *, optional: builtins.bool = False) -> Any:
        value = self.raw(key, optional=optional)
        if value is None:
            return None
        if isinstance(value, bool) and bool not in types:
            raise BundleError(f"expected {types[0].__name__}, got bool", field=self._p(key))
        if not isinstance(value, types):
            raise BundleError(f"expected {types[0].__name__}, got {type(value).__name__}", field=self._p(key))
        return value

    def str(self, key: builtins.str, *, optional: builtins.bool = False) -> Any:
        return self.typed(key, (str,), optional=optional)

    def int(self, key: builtins.str, *, optional: builtins.bool = False) -> Any:
        return self.typed(key, (int,), optional=optional)

    def float(self, key: builtins.str, *, optional: builtins.bool = False) -> builtins.float | None:
        value = self.typed(key, (float, int), optional=optional)
        return None if value is None else float(value)

    def bool(self, key: builtins.str, *, default: builtins.bool = False) -> bool:
        if key not in self.data:
            return default
        return bool(self.typed(key, (bool,)))

    def enum(self, key: builtins.str, enum: type[E], *, optional: builtins.bool = False) -> E | None:
        value = self.str(key, optional=optional)
        if value is None:
            return None
        try:
            return enum(value)
        except ValueError:
            allowed = [m.value for m in enum]
            raise BundleError(f"must be one of {allowed}, got {value!r}", field=self._p(key)) from None

    def list(self, key: builtins.str, *, optional: builtins.bool = False) -> list[Any]:
        value = self.typed(key, (list,), optional=optional)
        return [] if value is None else value

    def obj(self, key: builtins.str, *, optional: builtins.bool = False) -> _Reader | None:
        value = self.raw(key, optional=optional)
        return None if value is None else _Reader(value, self._p(key))

    def objs(self, key: builtins.str, build: Callable[[_Reader], T]) -> tuple[T, ...]:
        return tuple(build(_Reader(item, f"{self._p(key)}[{i}]")) for i, item in enumerate(self.list(key)))

    def strs(self, key: builtins.str, *, optional: builtins.bool = False) -> tuple[builtins.str, ...]:
        items = self.list(key, optional=optional)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise BundleError("expected a string", field=f"{self._p(key)}[{i}]")
        return tuple(items)

    def floats(self, key: builtins.str, n: builtins.int | None = None) -> tuple[builtins.float, ...]:
        items = self.list(key)
        if n is not None and len(items) != n:
            raise BundleError(f"expected {n} numbers, got {len(items)}", field=self._p(key))
        for i, item in enumerate(items):
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise BundleError("expected a number", field=f"{self._p(key)}[{i}]")
        return tuple(float(x) for x in items)

    def dict(self, key: builtins.str) -> dict[builtins.str, Any]:
        value = self.typed(key, (dict,), optional=True)
        return dict(value) if value else {}

    def fail(self, key: builtins.str, message: builtins.str) -> BundleError:
        return BundleError(message, field=self._p(key))


def _clean(obj: Any) -> Any:
    """Dataclass → JSON-ready value: enums to values, tuples to lists, None kept."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _clean(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [_clean(x) for x in obj]
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class InputSpec:
    """How a camera frame (uint8 BGR, HxWx3) becomes the network input."""

    name: str = "input"
    shape: tuple[int | None, ...] = (None, 3, 224, 224)  # None = dynamic batch
    dtype: str = "float32"
    layout: Layout = Layout.NCHW
    color_order: ColorOrder = ColorOrder.RGB
    resize: ResizeMode = ResizeMode.STRETCH
    resize_to: int | None = None  # short side before a center crop
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    pad_value: int = 114  # letterbox padding, uint8 before scaling

    @property
    def height(self) -> int:
        dim = self.shape[2] if self.layout is Layout.NCHW else self.shape[1]
        return int(dim or 0)

    @property
    def width(self) -> int:
        dim = self.shape[3] if self.layout is Layout.NCHW else self.shape[2]
        return int(dim or 0)

    def frame_spec(self) -> InputSpec:
        """The input of a frame-form variant: the resized uint8 BGR frame, NHWC, nothing else done.

        Same name, batch, size and resize geometry (mode, ``resize_to``, padding) as this spec;
        the colour order, scale, mean, std and layout are applied inside the graph.
        """
        return dataclasses.replace(
            self,
            shape=(self.shape[0], self.height, self.width, 3),
            dtype="uint8",
            layout=Layout.NHWC,
            color_order=ColorOrder.BGR,
            scale=1.0,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
        )

    def for_form(self, form: InputForm) -> InputSpec:
        """What a variant of input ``form`` takes: this spec, or :meth:`frame_spec`."""
        return self.frame_spec() if form is InputForm.FRAME else self

    def to_dict(self) -> dict[str, Any]:
        return dict(_clean(self))

    @classmethod
    def from_dict(cls, data: Any, path: str = "input") -> InputSpec:
        r = _Reader(data, path)
        shape_raw = r.list("shape")
        if len(shape_raw) != 4:
            raise r.fail("shape", f"expected 4 dimensions, got {len(shape_raw)}")
        shape: list[int | None] = []
        for i, dim in enumerate(shape_raw):
            if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0):
                raise BundleError("expected a positive int or null", field=f"{path}.shape[{i}]")
            if dim is None and i != 0:
                raise BundleError("only the batch dimension may be dynamic", field=f"{path}.shape[{i}]")
            shape.append(dim)
        dtype = r.str("dtype")
        if dtype not in ("float32", "float16", "uint8"):
            raise r.fail("dtype", f"must be one of ['float32', 'float16', 'uint8'], got {dtype!r}")
        std = r.floats("std", 3)
        if any(s <= 0 for s in std):
            raise r.fail("std", "every std must be > 0")
        spec = cls(
            name=r.str("name"),
            shape=tuple(shape),
            dtype=dtype,
            layout=r.enum("layout", Layout) or Layout.NCHW,
            color_order=r.enum("color_order", ColorOrder) or ColorOrder.RGB,
            resize=r.enum("resize", ResizeMode) or ResizeMode.STRETCH,
            resize_to=r.int("resize_to", optional=True),
            scale=float(r.float("scale") or 0.0),
            mean=r.floats("mean", 3),  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            pad_value=int(r.int("pad_value", optional=True) or 114),
        )
        if spec.scale <= 0:
            raise r.fail("scale", f"must be > 0, got {spec.scale}")
        return spec


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...]
    meaning: str = ""  # "logits", "boxes_xyxy", "scores", "mask_logits"

    @classmethod
    def from_dict(cls, r: _Reader) -> TensorSpec:
        shape = r.list("shape")
        for i, dim in enumerate(shape):
            if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
                raise BundleError("expected an int or null", field=f"{r.path}.shape[{i}]")
        return cls(name=r.str("name"), shape=tuple(shape), meaning=r.str("meaning", optional=True) or "")


@dataclass(frozen=True)
class DecoderSpec:
    kind: DecoderKind
    top_k: int = 5
    score_threshold: float = 0.3
    iou_threshold: float = 0.5
    max_detections: int = 100

    @classmethod
    def from_dict(cls, r: _Reader) -> DecoderSpec:
        kind = r.enum("kind", DecoderKind)
        assert kind is not None
        return cls(
            kind=kind,
            top_k=int(r.int("top_k", optional=True) or 5),
            score_threshold=float(r.float("score_threshold", optional=True) or 0.3),
            iou_threshold=float(r.float("iou_threshold", optional=True) or 0.5),
            max_detections=int(r.int("max_detections", optional=True) or 100),
        )


@dataclass(frozen=True)
class OutputSpec:
    tensors: tuple[TensorSpec, ...]
    decoder: DecoderSpec

    @classmethod
    def from_dict(cls, data: Any, path: str = "output") -> OutputSpec:
        r = _Reader(data, path)
        tensors = r.objs("tensors", TensorSpec.from_dict)
        if not tensors:
            raise r.fail("tensors", "at least one output tensor is required")
        dec = r.obj("decoder")
        assert dec is not None
        return cls(tensors=tensors, decoder=DecoderSpec.from_dict(dec))


@dataclass(frozen=True)
class HardwareRequirements:
    """What a variant needs of the device that runs it."""

    accelerators: tuple[str, ...] = ("cpu",)  # any of: cpu, cuda, jetson
    min_compute_capability: str | None = None  # "7.2"
    tensorrt_version: str | None = None  # engines are tied to the TensorRT version
    compute_capability: str | None = None  # engines are tied to the exact GPU arch
    cpu_arch: tuple[str, ...] = ()  # empty = any; e.g. ("x86_64",)
    cpu_features: tuple[str, ...] = ()  # e.g. ("avx2",)
    execution_providers: tuple[str, ...] = ()  # any of these ORT providers
    build_on_device: bool = False  # an ONNX the device compiles to a TensorRT engine

    def to_dict(self) -> dict[str, Any]:
        return dict(_clean(self))

    @classmethod
    def from_dict(cls, r: _Reader) -> HardwareRequirements:
        accelerators = r.strs("accelerators")
        for i, acc in enumerate(accelerators):
            if acc not in ("cpu", "cuda", "jetson"):
                raise BundleError(
                    f"must be one of ['cpu', 'cuda', 'jetson'], got {acc!r}",
                    field=f"{r.path}.accelerators[{i}]",
                )
        return cls(
            accelerators=accelerators,
            min_compute_capability=r.str("min_compute_capability", optional=True),
            tensorrt_version=r.str("tensorrt_version", optional=True),
            compute_capability=r.str("compute_capability", optional=True),
            cpu_arch=r.strs("cpu_arch", optional=True),
            cpu_features=r.strs("cpu_features", optional=True),
            execution_providers=r.strs("execution_providers", optional=True),
            build_on_device=r.bool("build_on_device"),
        )


@dataclass(frozen=True)
class Measurement:
    """Accuracy and latency of a variant, and where they were measured."""

    metric: str  # "top1", "map50", "miou"
    accuracy: float | None
    accuracy_delta: float | None  # points vs the FP32 reference (negative = worse)
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    throughput_qps: float | None
    host: str  # "x86_64 Intel Xeon ... / onnxruntime 1.20.1 CPUExecutionProvider"
    measured_at: str  # ISO-8601

    @classmethod
    def from_dict(cls, r: _Reader) -> Measurement:
        return cls(
            metric=r.str("metric"),
            accuracy=r.float("accuracy", optional=True),
            accuracy_delta=r.float("accuracy_delta", optional=True),
            latency_p50_ms=r.float("latency_p50_ms", optional=True),
            latency_p99_ms=r.float("latency_p99_ms", optional=True),
            throughput_qps=r.float("throughput_qps", optional=True),
            host=r.str("host"),
            measured_at=r.str("measured_at"),
        )


@dataclass(frozen=True)
class Variant:
    id: str
    format: Format
    precision: Precision
    file: str
    sha256: str
    size: int
    requires: HardwareRequirements = field(default_factory=HardwareRequirements)
    measurement: Measurement | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # calibration method, excluded nodes...
    input_form: InputForm = InputForm.TENSOR  # "frame": the graph takes the resized uint8 BGR frame

    @classmethod
    def from_dict(cls, r: _Reader) -> Variant:
        vid = r.str("id")
        if not _NAME.match(vid):
            raise r.fail("id", f"must match {_NAME.pattern}, got {vid!r}")
        file = r.str("file")
        if not _FILE.match(file):
            raise r.fail("file", f"must be a plain file name matching {_FILE.pattern}, got {file!r}")
        sha = r.str("sha256")
        if not _SHA256.match(sha):
            raise r.fail("sha256", f"must be 64 lowercase hex digits, got {sha!r}")
        size = r.int("size")
        if size <= 0:
            raise r.fail("size", f"must be > 0, got {size}")
        req = r.obj("requires", optional=True)
        meas = r.obj("measurement", optional=True)
        return cls(
            id=vid,
            format=r.enum("format", Format) or Format.ONNX,
            precision=r.enum("precision", Precision) or Precision.FP32,
            file=file,
            sha256=sha,
            size=size,
            requires=HardwareRequirements.from_dict(req) if req else HardwareRequirements(),
            measurement=Measurement.from_dict(meas) if meas else None,
            details=r.dict("details"),
            input_form=r.enum("input_form", InputForm, optional=True) or InputForm.TENSOR,
        )


@dataclass(frozen=True)
class SpeedupEvidence:
    """Why a variant was (or was not) preferred over the FP32 baseline: an interval, not a point.

    ``speedup`` is ``median(baseline) / median(candidate)`` of per-query times
    measured interleaved; ``low``/``high`` its bootstrap interval at
    ``confidence`` (see :mod:`models.stats`).
    """

    candidate: str
    baseline: str
    metric: str  # "cpu" (thread CPU time per query) or "wall"
    speedup: float
    low: float
    high: float
    confidence: float
    queries: int
    preferred: bool

    @classmethod
    def from_dict(cls, r: _Reader) -> SpeedupEvidence:
        metric = r.str("metric")
        if metric not in ("cpu", "wall"):
            raise r.fail("metric", f"must be 'cpu' or 'wall', got {metric!r}")
        speedup, low, high = (r.float(k) for k in ("speedup", "low", "high"))
        assert speedup is not None and low is not None and high is not None
        if not 0 < low <= speedup <= high:
            raise r.fail("low", f"need 0 < low <= speedup <= high, got {low}, {speedup}, {high}")
        confidence = r.float("confidence")
        assert confidence is not None
        if not 0.0 < confidence < 1.0:
            raise r.fail("confidence", f"must be within (0, 1), got {confidence}")
        return cls(
            candidate=r.str("candidate"),
            baseline=r.str("baseline"),
            metric=metric,
            speedup=speedup,
            low=low,
            high=high,
            confidence=confidence,
            queries=r.int("queries"),
            preferred=r.bool("preferred"),
        )


@dataclass(frozen=True)
class SelectionEntry:
    """Preferred variant order for one hardware class, why, and the timing evidence.

    A device re-times the variants it may run with the same interval rule and
    ``min_speedup``; this order is the preference and the fallback.
    """

    order: tuple[str, ...]
    reason: str
    min_speedup: float = 1.1
    evidence: tuple[SpeedupEvidence, ...] = ()

    @classmethod
    def from_dict(cls, r: _Reader) -> SelectionEntry:
        order = r.strs("order")
        if not order:
            raise r.fail("order", "must name at least one variant")
        min_speedup = r.float("min_speedup", optional=True)
        min_speedup = 1.1 if min_speedup is None else min_speedup
        if min_speedup < 1.0:
            raise r.fail("min_speedup", f"must be >= 1, got {min_speedup}")
        evidence = r.objs("evidence", SpeedupEvidence.from_dict) if r.has("evidence") else ()
        return cls(order=order, reason=r.str("reason"), min_speedup=min_speedup, evidence=evidence)


@dataclass(frozen=True)
class ClassAgreement:
    """Expected agreement on the frames the *baseline* sees as ``label`` (what a device keys a frame by)."""

    label: str
    agreement: float
    frames: int

    @classmethod
    def from_dict(cls, r: _Reader) -> ClassAgreement:
        agreement = r.float("agreement")
        assert agreement is not None
        if not 0.0 <= agreement <= 1.0:
            raise r.fail("agreement", f"must be within [0, 1], got {agreement}")
        frames = r.int("frames")
        if frames <= 0:
            raise r.fail("frames", f"must be > 0, got {frames}")
        return cls(label=r.str("label"), agreement=agreement, frames=frames)


@dataclass(frozen=True)
class AgreementExpectation:
    """How often ``variant`` of this bundle is expected to agree with a baseline release.

    Keyed by the baseline's identity: ``baseline`` is ``"name@version"`` and
    ``baseline_sha256`` the file the baseline serves (its ``baseline_variant``).
    ``heldout`` is measured on the held-out split, ``calib`` on the calibration
    frames (the deployment domain, e.g. frames from the fleet's cameras). The
    bundle's own FP32 is always one baseline, so a device running a release
    the bundle knows nothing of can still judge the candidate against it.
    ``per_class`` breaks the agreement down by the class the baseline
    predicted, on both sets of frames together (classification only; at most
    one entry per label, every label one of the bundle's).
    """

    variant: str
    baseline: str
    baseline_variant: str
    baseline_sha256: str
    heldout: float
    heldout_frames: int
    calib: float | None = None
    calib_frames: int = 0
    per_class: tuple[ClassAgreement, ...] = ()

    @property
    def expected(self) -> float:
        """The lower of the two measured agreements: the device must not expect more."""
        return self.heldout if self.calib is None else min(self.heldout, self.calib)

    @classmethod
    def from_dict(cls, r: _Reader) -> AgreementExpectation:
        baseline = r.str("baseline")
        if "@" not in baseline:
            raise r.fail("baseline", f"must be 'name@version', got {baseline!r}")
        parse_semver(baseline.split("@", 1)[1], where=r._p("baseline"))
        sha = r.str("baseline_sha256")
        if not _SHA256.match(sha):
            raise r.fail("baseline_sha256", f"must be 64 lowercase hex digits, got {sha!r}")
        heldout = r.float("heldout")
        calib = r.float("calib", optional=True)
        for key, value in (("heldout", heldout), ("calib", calib)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise r.fail(key, f"must be within [0, 1], got {value}")
        frames = r.int("heldout_frames")
        if frames <= 0:
            raise r.fail("heldout_frames", f"must be > 0, got {frames}")
        calib_frames = r.int("calib_frames", optional=True) or 0
        if calib is not None and calib_frames <= 0:
            raise r.fail("calib_frames", "must be > 0 when calib is given")
        assert heldout is not None
        per_class = r.objs("per_class", ClassAgreement.from_dict) if r.has("per_class") else ()
        for i, c in enumerate(per_class):
            if c.label in [x.label for x in per_class[:i]]:
                raise BundleError(f"duplicate class {c.label!r}", field=f"{r._p('per_class')}[{i}].label")
        return cls(
            variant=r.str("variant"),
            baseline=baseline,
            baseline_variant=r.str("baseline_variant"),
            baseline_sha256=sha,
            heldout=heldout,
            heldout_frames=frames,
            calib=calib,
            calib_frames=calib_frames,
            per_class=per_class,
        )


@dataclass(frozen=True)
class Gates:
    """What a device must measure before (shadow) and after (health) a swap.

    Agreement is judged by a sequential test (:class:`models.stats.AgreementTest`)
    against ``p0 = max(expected - agreement_tolerance, min_agreement)``, where
    *expected* comes from the bundle's :class:`AgreementExpectation` for the
    release the device runs. ``min_agreement`` is a floor an operator may raise.
    When that expectation breaks agreement down by class, each class is tested
    too (:class:`models.stats.ClassAgreementTest`): against the same formula on
    the class's expectation, with the alternative ``class_agreement_effect``
    below it.
    """

    latency_budget_ms: float  # p95 on the device
    min_agreement: float = 0.0  # floor under the expectation; top-1 agreement / box F1@0.5
    agreement_tolerance: float = 0.05  # how far below the expectation still counts as consistent
    agreement_effect: float = 0.15  # how far below p0 counts as broken (the SPRT's alternative)
    class_agreement_effect: float = 0.5  # per-class tests: how far below a class's p0 counts as that class broken
    false_refusal_rate: float = 0.01  # SPRT alpha at p0
    false_acceptance_rate: float = 0.01  # SPRT beta at p0 - agreement_effect
    max_nan_frames: int = 0
    min_shadow_frames: int = 10  # frames seen before any agreement verdict
    shadow_frames: int = 350  # at most this many frames; then a one-sided Wilson bound decides
    health_window_s: float = 30.0  # health watch after the swap
    max_latency_regression: float = 1.5  # health: p95 / shadow p95 above this rolls back
    max_error_rate: float = 0.01  # health: failed inferences / frames

    @classmethod
    def from_dict(cls, data: Any, path: str = "gates") -> Gates:
        r = _Reader(data, path)
        budget = r.float("latency_budget_ms")
        assert budget is not None
        if budget <= 0:
            raise r.fail("latency_budget_ms", f"must be > 0, got {budget}")

        def opt(key: str, default: float, low: float, high: float) -> float:
            value = r.float(key, optional=True)
            value = default if value is None else value
            if not low <= value <= high:
                raise r.fail(key, f"must be within [{low:g}, {high:g}], got {value}")
            return value

        gates = cls(
            latency_budget_ms=budget,
            min_agreement=opt("min_agreement", 0.0, 0.0, 1.0),
            agreement_tolerance=opt("agreement_tolerance", 0.05, 0.0, 0.5),
            agreement_effect=opt("agreement_effect", 0.15, 0.01, 0.9),
            class_agreement_effect=opt("class_agreement_effect", 0.5, 0.05, 0.95),
            false_refusal_rate=opt("false_refusal_rate", 0.01, 1e-6, 0.49),
            false_acceptance_rate=opt("false_acceptance_rate", 0.01, 1e-6, 0.49),
            max_nan_frames=int(opt("max_nan_frames", 0, 0, 1e9)),
            min_shadow_frames=int(opt("min_shadow_frames", 10, 1, 1e6)),
            shadow_frames=int(opt("shadow_frames", 350, 1, 1e6)),
            health_window_s=opt("health_window_s", 30.0, 0.0, 86400.0),
            max_latency_regression=opt("max_latency_regression", 1.5, 1.0, 1e3),
            max_error_rate=opt("max_error_rate", 0.01, 0.0, 1.0),
        )
        if gates.min_shadow_frames > gates.shadow_frames:
            raise r.fail(
                "min_shadow_frames", f"must be <= shadow_frames ({gates.shadow_frames}), got {gates.min_shadow_frames}"
            )
        return gates

    def agreement_threshold(self, expected: float) -> float:
        """``p0`` of the sequential test for a candidate expected to agree ``expected``."""
        return min(1.0, max(expected - self.agreement_tolerance, self.min_agreement, 1e-3))

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> Gates:
        """Rollout-level overrides (validated the same way)."""
        if not overrides:
            return self
        merged = {**_clean(self), **{k: v for k, v in overrides.items() if v is not None}}
        return Gates.from_dict(merged, "gates")

    def loosened_by(self, overrides: Mapping[str, Any] | None) -> list[str]:
        """The gates ``overrides`` would make less strict (see :data:`GATE_STRICTER`), in field order.

        Raises:
            BundleError: an override is invalid (naming it).
        """
        merged = self.with_overrides(overrides)
        return [k for k, d in GATE_STRICTER.items() if (getattr(merged, k) - getattr(self, k)) * d < 0]

    def tightened_by(self, overrides: Mapping[str, Any] | None) -> Gates:
        """These gates with every override that makes one stricter; a looser value is ignored.

        Raises:
            BundleError: an override is invalid (naming it).
        """
        merged = self.with_overrides(overrides)
        return dataclasses.replace(merged, **{k: getattr(self, k) for k in self.loosened_by(overrides)})


# which way each gate gets stricter: +1 a higher value, -1 a lower one (rollouts may only tighten)
GATE_STRICTER: Mapping[str, int] = {
    "latency_budget_ms": -1,
    "min_agreement": +1,
    "agreement_tolerance": -1,
    "agreement_effect": -1,
    "class_agreement_effect": -1,
    "false_refusal_rate": +1,
    "false_acceptance_rate": -1,
    "max_nan_frames": -1,
    "min_shadow_frames": +1,
    "shadow_frames": +1,
    "health_window_s": +1,
    "max_latency_regression": -1,
    "max_error_rate": -1,
}


@dataclass(frozen=True)
class Provenance:
    training_run: str
    dataset_fingerprint: str
    code_version: str
    created_at: str
    checkpoint_sha256: str | None = None
    dataset: Mapping[str, Any] = field(default_factory=dict)  # models.datasets.DatasetSpec

    @classmethod
    def from_dict(cls, data: Any, path: str = "provenance") -> Provenance:
        r = _Reader(data, path)
        return cls(
            training_run=r.str("training_run"),
            dataset_fingerprint=r.str("dataset_fingerprint"),
            code_version=r.str("code_version"),
            created_at=r.str("created_at"),
            checkpoint_sha256=r.str("checkpoint_sha256", optional=True),
            dataset=r.dict("dataset"),
        )


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    task: Task
    labels: tuple[str, ...]
    input: InputSpec
    output: OutputSpec
    variants: tuple[Variant, ...]
    selection: Mapping[str, SelectionEntry]
    gates: Gates
    provenance: Provenance
    arch: str = ""
    expectations: tuple[AgreementExpectation, ...] = ()
    schema: str = SCHEMA

    def expectation(self, variant_id: str, *, baseline: str, baseline_sha256: str) -> AgreementExpectation | None:
        """The expectation of ``variant_id`` against the release ``baseline`` ("name@version")
        serving the file ``baseline_sha256``, or None when this bundle has none for it."""
        for e in self.expectations:
            if (e.variant, e.baseline, e.baseline_sha256) == (variant_id, baseline, baseline_sha256):
                return e
        return None

    @property
    def release(self) -> str:
        """``"name@version"``."""
        return f"{self.name}@{self.version}"

    def variant(self, variant_id: str) -> Variant:
        for v in self.variants:
            if v.id == variant_id:
                return v
        raise BundleError(
            f"no variant {variant_id!r}; bundle has {[v.id for v in self.variants]}",
            field="variants",
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(_clean(self))

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        r = _Reader(data, "")
        schema = r.str("schema")
        if schema != SCHEMA:
            raise BundleError(f"unsupported schema {schema!r}; this build reads {SCHEMA!r}", field="schema")
        name = r.str("name")
        if not _NAME.match(name):
            raise r.fail("name", f"must match {_NAME.pattern}, got {name!r}")
        version = r.str("version")
        parse_semver(version)
        task = r.enum("task", Task)
        assert task is not None
        labels = r.strs("labels")
        if not labels:
            raise r.fail("labels", "at least one label is required")
        variants = r.objs("variants", Variant.from_dict)
        if not variants:
            raise r.fail("variants", "at least one variant is required")
        ids = [v.id for v in variants]
        files = [v.file for v in variants]
        for i, v in enumerate(variants):
            if v.id in ids[:i]:  # name the second occurrence, the one to remove
                raise BundleError(f"duplicate variant id {v.id!r}", field=f"variants[{i}].id")
            if v.file in files[:i] or v.file == MANIFEST_NAME:
                raise BundleError(f"duplicate or reserved file {v.file!r}", field=f"variants[{i}].file")
        sel_raw = r.obj("selection")
        assert sel_raw is not None
        selection: dict[str, SelectionEntry] = {}
        for hw_class in sorted(sel_raw.data):
            entry = SelectionEntry.from_dict(_Reader(sel_raw.data[hw_class], f"selection.{hw_class}"))
            for j, vid in enumerate(entry.order):
                if vid not in ids:
                    raise BundleError(
                        f"names unknown variant {vid!r}; variants are {ids}",
                        field=f"selection.{hw_class}.order[{j}]",
                    )
            selection[hw_class] = entry
        expectations = r.objs("expectations", AgreementExpectation.from_dict) if r.has("expectations") else ()
        for i, e in enumerate(expectations):
            if e.variant not in ids:
                raise BundleError(
                    f"names unknown variant {e.variant!r}; variants are {ids}", field=f"expectations[{i}].variant"
                )
            key = (e.variant, e.baseline, e.baseline_sha256)
            if key in [(x.variant, x.baseline, x.baseline_sha256) for x in expectations[:i]]:
                raise BundleError(
                    f"duplicate expectation for {e.variant} against {e.baseline}", field=f"expectations[{i}]"
                )
            for j, c in enumerate(e.per_class):
                if c.label not in labels:
                    raise BundleError(
                        f"names unknown label {c.label!r}; labels are {list(labels)[:10]}"
                        f"{' ...' if len(labels) > 10 else ''}",
                        field=f"expectations[{i}].per_class[{j}].label",
                    )
        return cls(
            schema=schema,
            name=name,
            version=version,
            task=task,
            labels=labels,
            input=InputSpec.from_dict(r.raw("input")),
            output=OutputSpec.from_dict(r.raw("output")),
            variants=variants,
            selection=selection,
            gates=Gates.from_dict(r.raw("gates")),
            provenance=Provenance.from_dict(r.raw("provenance")),
            arch=r.str("arch", optional=True) or "",
            expectations=expectations,
        )


# --------------------------------------------------------------------------- directories


def load_manifest(data: bytes | str) -> Manifest:
    """Parse and validate manifest JSON text.

    Raises:
        BundleError: not JSON (nested past the decoder's depth included), or not a valid manifest.
    """
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"not valid JSON: {e}", field=MANIFEST_NAME) from e
    return Manifest.from_dict(obj)


def read_bundle(directory: str | os.PathLike[str], *, verify: bool = True) -> Manifest:
    """Load ``bundle.json`` from a directory; with ``verify``, check every variant file."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{path} does not exist; is {directory} a bundle directory?", field=MANIFEST_NAME)
    manifest = load_manifest(path.read_bytes())
    if verify:
        verify_bundle(directory, manifest)
    return manifest


def verify_bundle(
    directory: str | os.PathLike[str],
    manifest: Manifest,
    *,
    variant_ids: Sequence[str] | None = None,
) -> None:
    """Check length then sha256 of the variant files present (all, or ``variant_ids``)."""
    for i, v in enumerate(manifest.variants):
        if variant_ids is not None and v.id not in variant_ids:
            continue
        f = Path(directory) / v.file
        if not f.is_file():
            raise BundleError(f"file {v.file!r} is missing from {directory}", field=f"variants[{i}].file")
        size = f.stat().st_size
        if size != v.size:
            raise BundleError(f"{v.file} is {size} bytes, manifest says {v.size}", field=f"variants[{i}].size")
        digest = sha256_file(f)
        if digest != v.sha256:
            raise BundleError(f"{v.file} has sha256 {digest}, manifest says {v.sha256}", field=f"variants[{i}].sha256")


def write_bundle(directory: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write ``bundle.json`` atomically (temp file, fsync, rename) after verifying the files."""
    directory = Path(directory)
    Manifest.from_dict(json.loads(manifest.to_json()))  # round-trip validation
    verify_bundle(directory, manifest)
    write_atomic(directory / MANIFEST_NAME, manifest.to_json() + b"\n")
    return directory / MANIFEST_NAME
