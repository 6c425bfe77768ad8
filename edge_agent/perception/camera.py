"""Camera sources: where the perception pipeline gets its frames.

A source string names one of:

- ``synthetic`` / ``synthetic:patterns`` / ``synthetic:signs`` — generated frames (tests, demos);
- ``0`` or ``/dev/video0`` — a V4L2 device;
- ``rtsp://...``, ``http(s)://...`` — a network stream (RTSP, MJPEG over HTTP);
- a string containing ``!`` — a GStreamer pipeline ending in ``appsink``
  (Jetson: ``nvarguscamerasrc ! ... ! appsink``), opened with ``cv2.CAP_GSTREAMER``;
- anything else — a video file.

Every OpenCV source is read through ``cv2.VideoCapture``. A live source that
stops delivering frames is reopened with exponential back-off; a file ends
(or loops). This module captures frames only: queueing, inference and
counting are :mod:`edge_agent.perception.pipeline`'s job.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from edge_agent.errors import EdgeAgentError

__all__ = [
    "CameraError",
    "SourceKind",
    "SourceSpec",
    "Frame",
    "FrameSource",
    "ReconnectPolicy",
    "OpenCVSource",
    "SyntheticSource",
    "parse_source",
    "open_source",
    "CameraSpec",
    "parse_camera",
    "parse_cameras",
    "read_sources_file",
]

log = logging.getLogger(__name__)


class CameraError(EdgeAgentError):
    """A source cannot be opened (or reopened); the message names the source."""


class SourceKind(str, Enum):
    DEVICE = "device"
    FILE = "file"
    STREAM = "stream"  # rtsp://, http(s)://
    GSTREAMER = "gstreamer"
    SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class SourceSpec:
    kind: SourceKind
    target: str  # device index, path, URL, pipeline or synthetic generator name
    loop: bool = False  # files only: restart at EOF
    fps: float | None = None  # synthetic / file pacing; None = as fast as read

    @property
    def is_live(self) -> bool:
        """Live sources drop frames when inference falls behind; files and synthetic block."""
        return self.kind in (SourceKind.DEVICE, SourceKind.STREAM, SourceKind.GSTREAMER)

    def describe(self) -> str:
        return f"{self.kind.value} source {self.target!r}"


@dataclass(frozen=True)
class ReconnectPolicy:
    """Back-off for reopening a live source that dropped."""

    initial_s: float = 0.2  # first wait
    max_s: float = 5.0  # cap of the doubling wait
    max_attempts: int | None = None  # None = retry until stopped


@dataclass(frozen=True)
class Frame:
    index: int  # 0-based, counts every frame this source delivered
    image: np.ndarray  # uint8 BGR HxWx3
    captured_at: float  # time.monotonic()
    decode_ms: float  # time spent in read()/decode
    prepared: Any = None  # the network input, when the capture thread already preprocessed it
    camera: str = "cam0"  # the name of the camera that captured it


class FrameSource(Protocol):
    spec: SourceSpec

    def open(self) -> None: ...

    def read(self) -> Frame | None:
        """Next frame, or None when the source has ended (file EOF without loop, or stopped)."""

    def close(self) -> None: ...

    def interrupt(self) -> None:
        """Make a blocked :meth:`read` (back-off wait) return None soon."""

    @property
    def reconnects(self) -> int: ...


_DEVICE = re.compile(r"^(?:/dev/video)?(\d+)$")


def parse_source(text: str, *, loop: bool = False, fps: float | None = None) -> SourceSpec:
    """Classify a ``--source`` string; raises :class:`CameraError` for an empty or missing one."""
    text = text.strip() if isinstance(text, str) else ""
    if not text:
        raise CameraError(
            "source must be a device index, file, rtsp/http URL, GStreamer pipeline or 'synthetic', got ''"
        )
    if text == "synthetic" or text.startswith("synthetic:"):
        name = text.partition(":")[2] or "patterns"
        if name not in ("patterns", "signs", "scenes"):
            raise CameraError(f"synthetic generator must be one of ['patterns', 'signs', 'scenes'], got {name!r}")
        return SourceSpec(SourceKind.SYNTHETIC, name, loop=True, fps=fps)
    m = _DEVICE.match(text)
    if m:
        return SourceSpec(SourceKind.DEVICE, m[1], fps=fps)
    if re.match(r"^(rtsp|rtsps|http|https|rtmp|udp|tcp)://", text, re.I):
        return SourceSpec(SourceKind.STREAM, text, fps=fps)
    if "!" in text:
        return SourceSpec(SourceKind.GSTREAMER, text, fps=fps)
    return SourceSpec(SourceKind.FILE, text, loop=loop, fps=fps)


class _Pacer:
    """Sleeps so frames come no faster than ``fps`` (None = no pacing)."""

    def __init__(self, fps: float | None, stop: threading.Event) -> None:
        self.period = 1.0 / fps if fps and fps > 0 else 0.0
        self.next_at = 0.0
        self.stop = stop

    def wait(self) -> None:
        if not self.period:
            return
        now = time.monotonic()
        if self.next_at > now:
            self.stop.wait(self.next_at - now)
            now = self.next_at
        self.next_at = max(now, self.next_at) + self.period


class OpenCVSource:
    """A device, file, network stream or GStreamer pipeline read with ``cv2.VideoCapture``."""

    def __init__(self, spec: SourceSpec, *, reconnect: ReconnectPolicy | None = None) -> None:
        if spec.kind is SourceKind.SYNTHETIC:
            raise CameraError("synthetic sources are read by SyntheticSource, not OpenCV")
        self.spec = spec
        self.policy = reconnect or ReconnectPolicy()
        self._cap: cv2.VideoCapture | None = None
        self._stop = threading.Event()
        self._index = 0
        self._reconnects = 0
        self._reopening = False
        self._pacer = _Pacer(spec.fps, self._stop)

    @property
    def reconnects(self) -> int:
        return self._reconnects

    @property
    def reconnecting(self) -> bool:
        """The source dropped and is being reopened (no frames until it is back)."""
        return self._reopening

    def _capture(self) -> cv2.VideoCapture:
        spec = self.spec
        if spec.kind is SourceKind.DEVICE:
            return cv2.VideoCapture(int(spec.target), cv2.CAP_V4L2)
        if spec.kind is SourceKind.GSTREAMER:
            return cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)
        if spec.kind is SourceKind.STREAM:
            return cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG)
        return cv2.VideoCapture(spec.target)

    def open(self) -> None:
        """Open the capture; raises :class:`CameraError` naming the source and the cause."""
        if self.spec.kind is SourceKind.FILE and not Path(self.spec.target).is_file():
            raise CameraError(f"cannot open {self.spec.describe()}: no such file")
        try:
            cap = self._capture()
        except cv2.error as e:
            raise CameraError(f"cannot open {self.spec.describe()}: OpenCV said: {e}") from e
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"cannot open {self.spec.describe()}: {self._why_not_opened()}")
        self._cap = cap
        log.info("opened %s (%s backend)", self.spec.describe(), cap.getBackendName())

    def _why_not_opened(self) -> str:
        kind = self.spec.kind
        if kind is SourceKind.GSTREAMER and "GStreamer:                   NO" in cv2.getBuildInformation():
            return "this OpenCV build has no GStreamer support (cv2.getBuildInformation())"
        if kind is SourceKind.FILE:
            return "OpenCV could not decode it (cv2.VideoCapture.isOpened() is False; not a video or unsupported codec)"
        if kind is SourceKind.DEVICE:
            return (
                f"cv2.VideoCapture.isOpened() is False for /dev/video{self.spec.target} "
                "(missing, busy or no permission)"
            )
        return "cv2.VideoCapture.isOpened() is False (unreachable, refused or not a video stream)"

    def read(self) -> Frame | None:
        while not self._stop.is_set():
            if self._cap is None:
                self._reopening = True
                try:
                    if not self._reopen():
                        return None
                finally:
                    self._reopening = False
                continue
            self._pacer.wait()
            t0 = time.perf_counter()
            ok, image = self._cap.read()
            decode_ms = (time.perf_counter() - t0) * 1000.0
            if ok and image is not None:
                frame = Frame(self._index, _as_bgr(image), time.monotonic(), decode_ms)
                self._index += 1
                return frame
            if self.spec.kind is SourceKind.FILE:
                if not self.spec.loop or self._index == 0:
                    return None
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            log.warning("%s stopped delivering frames; reconnecting", self.spec.describe())
            self._cap.release()
            self._cap = None
        return None

    def _reopen(self) -> bool:
        """Reopen a live source with exponential back-off; False when stopped or out of attempts."""
        wait = self.policy.initial_s
        attempt = 0
        while not self._stop.is_set():
            if self.policy.max_attempts is not None and attempt >= self.policy.max_attempts:
                log.error("%s: giving up after %d reconnect attempts", self.spec.describe(), attempt)
                return False
            attempt += 1
            if self._stop.wait(wait):
                return False
            try:
                self.open()
            except CameraError as e:
                log.warning("reconnect attempt %d failed: %s", attempt, e)
                wait = min(wait * 2.0, self.policy.max_s)
                continue
            self._reconnects += 1
            log.info("%s reconnected after %d attempt(s)", self.spec.describe(), attempt)
            return True
        return False

    def interrupt(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    if image.shape[2] == 4:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR))
    return image


def draw_pattern(index: int, *, width: int = 96, height: int = 64) -> np.ndarray:
    """A deterministic test pattern: a dominant colour (blue/green/red cycling every
    30 frames) and a white square sweeping across it, so frames differ and models see change."""
    colours = ((200, 30, 30), (30, 200, 30), (30, 30, 200))  # BGR
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = colours[(index // 30) % 3]
    side = max(4, height // 4)
    x = (index * 3) % max(1, width - side)
    y = (index * 2) % max(1, height - side)
    img[y : y + side, x : x + side] = 255
    return img


class SyntheticSource:
    """Generated frames: drawn test patterns, or images from :mod:`models.datasets` synthetic sets."""

    def __init__(self, spec: SourceSpec, *, limit: int | None = None, size: tuple[int, int] = (640, 480)) -> None:
        self.spec = spec
        self.limit = limit  # frames before the source ends; None = endless
        self.size = size  # (width, height) of drawn patterns
        self._index = 0
        self._stop = threading.Event()
        self._pacer = _Pacer(spec.fps, self._stop)
        self._draw: Callable[[int], np.ndarray] = self._pattern

    @property
    def reconnects(self) -> int:
        return 0

    def _pattern(self, index: int) -> np.ndarray:
        return draw_pattern(index, width=self.size[0], height=self.size[1])

    def open(self) -> None:
        if self.spec.target == "patterns":
            return
        from models.datasets import DatasetError, DatasetSpec, open_dataset

        name = f"synthetic-{self.spec.target}"
        try:
            dataset = open_dataset(DatasetSpec(name=name, val_size=256), split="val")
        except DatasetError as e:
            raise CameraError(f"cannot open {self.spec.describe()}: {e}") from e
        self._draw = lambda i: np.ascontiguousarray(dataset[i % len(dataset)].image)

    def read(self) -> Frame | None:
        if self._stop.is_set() or (self.limit is not None and self._index >= self.limit):
            return None
        self._pacer.wait()
        t0 = time.perf_counter()
        image = self._draw(self._index)
        frame = Frame(self._index, image, time.monotonic(), (time.perf_counter() - t0) * 1000.0)
        self._index += 1
        return frame

    def interrupt(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()


def open_source(
    source: str | SourceSpec,
    *,
    loop: bool = False,
    fps: float | None = None,
    reconnect: ReconnectPolicy | None = None,
) -> FrameSource:
    """Parse (if needed) and open a source; raises :class:`CameraError` when it cannot open."""
    spec = source if isinstance(source, SourceSpec) else parse_source(source, loop=loop, fps=fps)
    src: FrameSource
    if spec.kind is SourceKind.SYNTHETIC:
        src = SyntheticSource(spec)
    else:
        src = OpenCVSource(spec, reconnect=reconnect)
    src.open()
    return src


# ---------------------------------------------------------------------- several cameras
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class CameraSpec:
    """One named camera of an agent: ``front=/dev/video0`` (``name`` front)."""

    name: str
    source: SourceSpec


def parse_camera(text: str, index: int, *, loop: bool = False, fps: float | None = None) -> CameraSpec:
    """``NAME=SOURCE`` or a bare ``SOURCE`` (named ``cam<index>``); raises :class:`CameraError`.

    ``NAME`` is a letter followed by up to 31 letters, digits, ``_`` or ``-``. Only a prefix of
    that form before the first ``=`` names the camera, so a GStreamer pipeline
    (``... ! video/x-raw,width=1280 ! appsink``) or a URL with a query string stays a bare source.
    """
    if not isinstance(text, str) or not text.strip():
        raise CameraError(
            "source must be NAME=SOURCE or SOURCE (a device index, file, rtsp/http URL, GStreamer pipeline "
            "or 'synthetic'), got ''"
        )
    head, sep, rest = text.strip().partition("=")
    if sep and _NAME.match(head):
        if not rest.strip():
            raise CameraError(f"camera {head!r} has no source after '=': expected NAME=SOURCE, got {text!r}")
        return CameraSpec(head, parse_source(rest, loop=loop, fps=fps))
    return CameraSpec(f"cam{index}", parse_source(text, loop=loop, fps=fps))


def parse_cameras(texts: Sequence[str], *, loop: bool = False, fps: float | None = None) -> tuple[CameraSpec, ...]:
    """Every ``--source`` of the command line, in order; raises :class:`CameraError` for an unparsable
    one or a camera name given twice."""
    cameras = tuple(parse_camera(t, i, loop=loop, fps=fps) for i, t in enumerate(texts))
    seen: dict[str, int] = {}
    for i, cam in enumerate(cameras):
        if cam.name in seen:
            raise CameraError(
                f"camera name {cam.name!r} is used twice (sources {seen[cam.name] + 1} and {i + 1}): "
                "every camera needs its own name"
            )
        seen[cam.name] = i
    return cameras


def read_sources_file(path: Path) -> list[str]:
    """The cameras of a ``--sources FILE``: a JSON or YAML list of ``NAME=SOURCE`` strings or of
    ``{"name": ..., "source": ...}`` objects. Raises :class:`CameraError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CameraError(f"cannot read --sources {path}: {e.strerror or e}") from e
    try:
        data = json.loads(text)
    except ValueError:
        data = _yaml(path, text)
    if not isinstance(data, list) or not data:
        raise CameraError(f"--sources {path} must hold a non-empty list of cameras, got {type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("source"), (str, int)):
            name = item.get("name")
            out.append(f"{name}={item['source']}" if name else str(item["source"]))
        else:
            raise CameraError(
                f"--sources {path}: item {i} must be 'NAME=SOURCE' or {{name: ..., source: ...}}, got {item!r}"
            )
    return out


def _yaml(path: Path, text: str) -> Any:
    try:
        import yaml
    except ImportError as e:
        raise CameraError(f"--sources {path} is not JSON, and PyYAML is not installed to read YAML") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CameraError(f"--sources {path} is neither JSON nor valid YAML: {e}") from e
