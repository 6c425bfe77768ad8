"""Frame preprocessing driven entirely by a bundle's :class:`~models.bundle.InputSpec`.

One function turns a camera frame (uint8, BGR, HxWx3 — what OpenCV decodes)
into the network input, and training's evaluation transform, the optimizer's
calibration reader and the agent's camera pipeline all call it, so a frame is
preprocessed identically everywhere.

A variant whose graph takes the frame itself (:attr:`~models.bundle.InputForm.FRAME`)
gets only the geometry here: ``Preprocessor(spec, InputForm.FRAME)`` returns the resized
uint8 BGR HxWx3 array (stretch, letterbox or center crop), and the graph does the cast,
channel order, normalisation and layout with the constants of :func:`normalization`.

numpy + OpenCV only. Augmentation is not done here (training does it on the
uint8 image before calling this).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from models.bundle import ColorOrder, InputForm, InputSpec, Layout, ResizeMode

__all__ = ["Transform", "Preprocessor", "normalization", "resize_frame"]


@dataclass(frozen=True)
class Transform:
    """How frame pixels map to network-input pixels: ``net = frame * scale + pad``."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_frame(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Map ``[K, 4]`` boxes from network-input pixels back to frame pixels."""
        out = boxes_xyxy.astype(np.float32, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale_y
        return out

    def to_input(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Map ``[K, 4]`` boxes from frame pixels to network-input pixels."""
        out = boxes_xyxy.astype(np.float32, copy=True)
        out[:, [0, 2]] = out[:, [0, 2]] * self.scale_x + self.pad_x
        out[:, [1, 3]] = out[:, [1, 3]] * self.scale_y + self.pad_y
        return out


def resize_frame(frame: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Transform]:
    """Resize a uint8 HxWx3 frame to the spec's input size with its resize mode."""
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be HxWx3, got shape {frame.shape}")
    h, w = frame.shape[:2]
    th, tw = spec.height, spec.width
    if spec.resize is ResizeMode.STRETCH:
        interp = cv2.INTER_AREA if (h > th or w > tw) else cv2.INTER_LINEAR
        out = cv2.resize(frame, (tw, th), interpolation=interp) if (h, w) != (th, tw) else frame
        return out, Transform(tw / w, th / h, 0.0, 0.0)
    if spec.resize is ResizeMode.LETTERBOX:
        s = min(tw / w, th / h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(frame, (nw, nh), interpolation=interp) if (nw, nh) != (w, h) else frame
        out = np.full((th, tw, 3), spec.pad_value, dtype=np.uint8)
        px, py = (tw - nw) // 2, (th - nh) // 2
        out[py : py + nh, px : px + nw] = resized
        return out, Transform(nw / w, nh / h, float(px), float(py))
    # center-crop: short side to resize_to (default: the crop size), then crop
    short = spec.resize_to or min(th, tw)
    s = short / min(h, w)
    nw, nh = max(tw, round(w * s)), max(th, round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(frame, (nw, nh), interpolation=interp)
    x0, y0 = (nw - tw) // 2, (nh - th) // 2
    return resized[y0 : y0 + th, x0 : x0 + tw], Transform(nw / w, nh / h, -float(x0), -float(y0))


def normalization(spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)``, float32 per channel (in the spec's colour order): ``(x * scale - mean) / std == x * a + b``.

    The one place these constants are computed: the numpy path below and the graph of a
    frame-form variant (``optimize.frame_input``) use the same float32 values.
    """
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return (spec.scale / std).astype(np.float32), (-mean / std).astype(np.float32)


class Preprocessor:
    """``Preprocessor(spec)(frame)`` → one input (no batch dim) in the spec's layout/dtype.

    With ``form=InputForm.FRAME`` it is the input of a frame-form variant: the frame resized
    to the spec's size with its resize mode, uint8 BGR HxWx3, and nothing else
    (``self.spec`` is then :meth:`InputSpec.frame_spec`).
    """

    def __init__(self, spec: InputSpec, form: InputForm = InputForm.TENSOR) -> None:
        spec = spec.for_form(form)
        self.spec = spec
        self.form = form
        # (x * scale - mean) / std == x * a + b, one fused multiply-add per pixel
        self._a, self._b = normalization(spec)
        self._dtype = np.dtype(spec.dtype)
        self.last_transform = Transform(1.0, 1.0, 0.0, 0.0)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8, got {frame.dtype}")
        img, self.last_transform = resize_frame(frame, self.spec)
        if self.spec.color_order is ColorOrder.RGB:
            img = img[:, :, ::-1]
        if self._dtype == np.uint8:
            x = np.ascontiguousarray(img)
        else:
            x = img.astype(np.float32) * self._a + self._b
        if self.spec.layout is Layout.NCHW:
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x, dtype=self._dtype)

    def batch(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([self(f) for f in frames])
