"""Camera sources against real OpenCV decoding: files, a dropping HTTP MJPEG stream, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.perception.camera import (
    CameraError,
    OpenCVSource,
    ReconnectPolicy,
    SourceKind,
    open_source,
    parse_source,
)
from tests.edge_agent.media import mjpeg_server, write_video


@pytest.mark.parametrize(
    ("text", "kind", "target"),
    [
        ("synthetic", SourceKind.SYNTHETIC, "patterns"),
        ("synthetic:signs", SourceKind.SYNTHETIC, "signs"),
        ("0", SourceKind.DEVICE, "0"),
        ("/dev/video2", SourceKind.DEVICE, "2"),
        ("rtsp://cam.local:554/stream", SourceKind.STREAM, "rtsp://cam.local:554/stream"),
        (
            "http://127.0.0.1:8080/stream.mjpg",
            SourceKind.STREAM,
            "http://127.0.0.1:8080/stream.mjpg",
        ),
        (
            "nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! appsink",
            SourceKind.GSTREAMER,
            "nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! appsink",
        ),
        ("clips/drive.avi", SourceKind.FILE, "clips/drive.avi"),
    ],
)
def test_parse_source_classifies_every_kind(text: str, kind: SourceKind, target: str) -> None:
    spec = parse_source(text)
    assert (spec.kind, spec.target) == (kind, target)
    assert spec.is_live == (kind in (SourceKind.DEVICE, SourceKind.STREAM, SourceKind.GSTREAMER))


def test_bad_source_strings_are_refused_with_a_reason() -> None:
    with pytest.raises(CameraError, match="source must be"):
        parse_source("  ")
    with pytest.raises(CameraError, match="synthetic generator must be one of"):
        parse_source("synthetic:unicorns")


def test_file_frames_decode_in_order_and_end_or_loop(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", [("red", 5), ("blue", 5)])
    src = open_source(str(video))
    frames = []
    while (f := src.read()) is not None:
        frames.append(f)
    src.close()
    assert [f.index for f in frames] == list(range(10))
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    # JPEG-decoded colours: red frames have red (BGR index 2) dominant, blue frames blue
    assert frames[0].image[30:, :, 2].mean() > 150 > frames[0].image[30:, :, 0].mean()
    assert frames[9].image[30:, :, 0].mean() > 150 > frames[9].image[30:, :, 2].mean()

    looping = open_source(str(video), loop=True)
    indices = [looping.read().index for _ in range(25)]  # type: ignore[union-attr]
    looping.close()
    assert indices == list(range(25))


def test_missing_file_names_the_source(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match=r"cannot open file source '.*nope\.avi': no such file"):
        open_source(str(tmp_path / "nope.avi"))


def test_undecodable_file_says_opencv_could_not_decode(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.avi"
    bogus.write_bytes(b"definitely not a video" * 100)
    with pytest.raises(CameraError, match="OpenCV could not decode it"):
        open_source(str(bogus))


def test_unreachable_stream_and_missing_device_fail_clearly() -> None:
    with pytest.raises(CameraError, match=r"cannot open stream source 'http://127\.0\.0\.1:9/x\.mjpg'"):
        open_source("http://127.0.0.1:9/x.mjpg")
    with pytest.raises(CameraError, match=r"device source '63'.*/dev/video63"):
        open_source("/dev/video63")


NO_GSTREAMER = "this OpenCV build has no GStreamer support"
NOT_OPENED = "cv2.VideoCapture.isOpened() is False"
# no GStreamer install has this element: the pipeline fails to open with or without GStreamer in OpenCV
UNOPENABLE = "edgefleetnosuchsrc ! videoconvert ! appsink"


def _opencv_has_gstreamer() -> bool:
    import cv2

    line = next((x for x in cv2.getBuildInformation().splitlines() if x.strip().startswith("GStreamer:")), "")
    return bool(line) and line.split(":", 1)[1].strip().split()[0] != "NO"


def test_gstreamer_pipeline_error_names_the_cause_on_this_host() -> None:
    with pytest.raises(CameraError, match="gstreamer source") as err:
        open_source(UNOPENABLE)
    expected, other = (NOT_OPENED, NO_GSTREAMER) if _opencv_has_gstreamer() else (NO_GSTREAMER, NOT_OPENED)
    assert expected in str(err.value) and other not in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("gstreamer_line", "cause"),
    [
        ("    GStreamer:                   NO", NO_GSTREAMER),
        ("    GStreamer:                   YES (1.22.0)", NOT_OPENED),
    ],
)
def test_gstreamer_error_cause_follows_the_opencv_build(
    monkeypatch: pytest.MonkeyPatch, gstreamer_line: str, cause: str
) -> None:
    """Both causes, whichever OpenCV this host has: the build information is what the agent reads."""
    import cv2

    monkeypatch.setattr(cv2, "getBuildInformation", lambda: f"General configuration\n  Video I/O:\n{gstreamer_line}\n")
    with pytest.raises(CameraError, match="gstreamer source") as err:
        open_source(UNOPENABLE)
    assert cause in str(err.value), str(err.value)


def test_synthetic_source_is_deterministic_and_changes() -> None:
    a, b = open_source("synthetic"), open_source("synthetic")
    fa = [a.read() for _ in range(40)]
    fb = [b.read() for _ in range(40)]
    assert all(
        x is not None and y is not None and np.array_equal(x.image, y.image) for x, y in zip(fa, fb, strict=True)
    )
    assert not np.array_equal(fa[0].image, fa[35].image)  # type: ignore[union-attr]


def test_dropped_http_stream_reconnects_and_keeps_delivering() -> None:
    with mjpeg_server(frames_per_connection=15) as (url, connections):
        src = OpenCVSource(parse_source(url), reconnect=ReconnectPolicy(initial_s=0.05, max_s=0.2))
        src.open()
        frames = [src.read() for _ in range(40)]
        src.close()
    assert all(f is not None for f in frames)
    assert [f.index for f in frames if f] == list(range(40))
    assert src.reconnects >= 2  # 40 frames from connections of 15
    assert len(connections) >= 3


def test_live_source_gives_up_after_max_attempts() -> None:
    with mjpeg_server(frames_per_connection=3) as (url, _):
        src = OpenCVSource(parse_source(url), reconnect=ReconnectPolicy(initial_s=0.02, max_attempts=2))
        src.open()
        assert [src.read() is not None for _ in range(3)] == [True, True, True]
    # the server is gone: two reconnect attempts fail, then the source ends
    assert src.read() is None
    src.close()
