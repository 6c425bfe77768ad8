"""Real media for the perception tests: MJPG videos written with cv2.VideoWriter and a
local HTTP MJPEG stream that drops its connection, read back through OpenCV's FFmpeg."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

BGR = {"red": (30, 30, 220), "green": (30, 220, 30), "blue": (220, 30, 30)}


def colour_frame(colour: str, index: int, *, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """A frame dominated by ``colour`` with a small moving white square (so frames differ)."""
    w, h = size
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = BGR[colour]
    x = (index * 2) % (w - 8)
    img[4:12, x : x + 8] = 255
    return img


def write_video(
    path: Path,
    segments: Sequence[tuple[str, int]],
    *,
    fps: float = 30.0,
    size: tuple[int, int] = (64, 48),
) -> Path:
    """Write an MJPG .avi: ``segments`` = [(colour, frame count), ...]."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {path}")
    i = 0
    for colour, count in segments:
        for _ in range(count):
            writer.write(colour_frame(colour, i, size=size))
            i += 1
    writer.release()
    return path


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def mjpeg_server(*, frames_per_connection: int, fps: float = 100.0) -> Iterator[tuple[str, list[int]]]:
    """Serve ``/stream.mjpg`` as multipart JPEGs; each connection is dropped after
    ``frames_per_connection`` frames. Yields (url, connection log)."""
    connections: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            connections.append(len(connections))
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            colours = ("blue", "green")
            try:
                for i in range(frames_per_connection):
                    ok, buf = cv2.imencode(".jpg", colour_frame(colours[i % 2], i))
                    data = buf.tobytes()
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n")
                    self.wfile.write(b"Content-Length: %d\r\n\r\n" % len(data) + data + b"\r\n")
                    self.wfile.flush()
                    time.sleep(1.0 / fps)
            except (BrokenPipeError, ConnectionResetError):
                return
            # returning closes the socket: the stream "dies" mid-run

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg", connections
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
