"""models.preprocess: resize modes, colour order, normalisation, layout and the box transform."""

from __future__ import annotations

import numpy as np
import pytest

from models.bundle import ColorOrder, InputSpec, Layout, ResizeMode
from models.preprocess import Preprocessor, resize_frame


def _spec(**kw: object) -> InputSpec:
    base: dict[str, object] = {"shape": (None, 3, 32, 32), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    base.update(kw)
    return InputSpec(**base)  # type: ignore[arg-type]


def test_stretch_rgb_scale_and_nchw() -> None:
    frame = np.zeros((64, 48, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    x = Preprocessor(_spec())(frame)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[2], 1.0)  # RGB: blue is the last channel
    np.testing.assert_allclose(x[:2], 0.0)
    bgr = Preprocessor(_spec(color_order=ColorOrder.BGR))(frame)
    np.testing.assert_allclose(bgr[0], 1.0)


def test_mean_std_match_the_formula_and_nhwc() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    spec = _spec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = Preprocessor(spec)(frame)
    rgb = frame[:, :, ::-1].astype(np.float32) / 255.0
    ref = ((rgb - np.array(spec.mean)) / np.array(spec.std)).transpose(2, 0, 1)
    np.testing.assert_allclose(x, ref, atol=1e-5)
    nhwc = Preprocessor(_spec(shape=(None, 32, 32, 3), layout=Layout.NHWC))(frame)
    assert nhwc.shape == (32, 32, 3)


def test_letterbox_pads_and_maps_boxes_both_ways() -> None:
    spec = _spec(resize=ResizeMode.LETTERBOX)
    frame = np.full((16, 64, 3), 200, np.uint8)
    img, t = resize_frame(frame, spec)
    assert img.shape == (32, 32, 3)
    assert (img[:12] == 114).all() and (img[20:] == 114).all() and (img[12:20] == 200).all()
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == (0.5, 0.5, 0.0, 12.0)
    boxes = np.array([[0, 0, 64, 16], [10, 4, 20, 8]], np.float32)
    np.testing.assert_allclose(t.to_frame(t.to_input(boxes)), boxes, atol=1e-5)
    np.testing.assert_allclose(t.to_input(boxes)[0], [0, 12, 32, 20])


def test_center_crop_and_batch() -> None:
    spec = _spec(resize=ResizeMode.CENTER_CROP, resize_to=40)
    frame = np.zeros((80, 120, 3), np.uint8)
    img, t = resize_frame(frame, spec)
    assert img.shape == (32, 32, 3) and t.scale_x == pytest.approx(0.5) and t.pad_x == -14.0
    pre = Preprocessor(spec)
    assert pre.batch([frame, frame]).shape == (2, 3, 32, 32)


def test_bad_frames_are_rejected_clearly() -> None:
    pre = Preprocessor(_spec())
    with pytest.raises(ValueError, match="must be uint8"):
        pre(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        pre(np.zeros((8, 8), np.uint8))


def test_uint8_input_passes_pixels_through() -> None:
    frame = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    x = Preprocessor(_spec(dtype="uint8"))(frame)
    assert x.dtype == np.uint8 and np.array_equal(x, frame[:, :, ::-1].transpose(2, 0, 1))
