"""The device API client against a hostile server: replies are capped in bytes and in time.

A small threaded ``http.server`` on 127.0.0.1 answers every request with what
the test sets: a gzip bomb, an endless body, a reply dripped a byte at a time.
"""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from edge_agent.errors import ServerError, ServerUnreachable
from edge_agent.link.client import ServerClient

Reply = Callable[[BaseHTTPRequestHandler], None]


class Hostile:
    def __init__(self) -> None:
        self.reply: Reply = lambda h: None
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with contextlib.suppress(OSError):  # the client cut it off: what it should do
                    hostile.reply(self)
                self.close_connection = True

            do_POST = do_PUT = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    h = Hostile()
    yield h
    h.close()


def _bomb(decompressed: int) -> bytes:
    return gzip.compress(b"\0" * decompressed, compresslevel=9)


def test_a_gzip_bomb_is_refused_without_decompressing_it(hostile: Hostile) -> None:
    bomb = _bomb(32 * 1024 * 1024)  # ~32 KiB on the wire; the same shape at 1 MB would be GiBs

    def reply(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(bomb)))
        h.end_headers()
        h.wfile.write(bomb)

    hostile.reply = reply
    tracemalloc.start()
    try:
        with pytest.raises(ServerError, match="Content-Encoding"):
            ServerClient(hostile.url, timeout_s=5).assignment("dev_1", "ab" * 16, etag=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes"


@pytest.mark.parametrize("length_header", [True, False])
def test_an_oversized_reply_is_cut_at_the_endpoint_cap(hostile: Hostile, length_header: bool) -> None:
    body = b'{"pad": "' + b"x" * (8 * 1024 * 1024) + b'"}'

    def reply(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if length_header:
            h.send_header("Content-Length", str(len(body)))
        else:
            h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(body)

    hostile.reply = reply
    tracemalloc.start()
    try:
        with pytest.raises(ServerError, match="more than"):
            ServerClient(hostile.url, timeout_s=5).assignment("dev_1", "ab" * 16, etag=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes"


def _drip_body(interval_s: float, count: int) -> Reply:
    def reply(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(count))
        h.end_headers()
        for _ in range(count):
            h.wfile.write(b" ")
            h.wfile.flush()
            time.sleep(interval_s)

    return reply


def _drip_headers(interval_s: float, count: int) -> Reply:
    def reply(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(count):
            h.wfile.write(f"X-Drip-{i}: 1\r\n".encode())
            h.wfile.flush()
            time.sleep(interval_s)

    return reply


@pytest.mark.parametrize("drip", [_drip_body, _drip_headers], ids=["body", "headers"])
def test_a_dripping_reply_fails_by_the_request_deadline(hostile: Hostile, drip: Callable[[float, int], Reply]) -> None:
    # each byte well inside the read timeout, five minutes in all: a client that read it to the end, or
    # noticed the deadline only then, would still be reading when the bounded wait below gives up
    hostile.reply = drip(0.5, 600)
    outcome: list[BaseException | object] = []

    def request() -> None:
        try:
            outcome.append(ServerClient(hostile.url, timeout_s=2).assignment("dev_1", "ab" * 16, etag=None))
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome.append(e)

    worker = threading.Thread(target=request, daemon=True)
    worker.start()
    worker.join(60)  # bounds the wait only
    assert not worker.is_alive(), "the request outlived its 2 s deadline"
    (error,) = outcome
    assert isinstance(error, ServerUnreachable) and "2 s deadline" in str(error), error


def test_an_honest_reply_still_reads(hostile: Hostile) -> None:
    def reply(h: BaseHTTPRequestHandler) -> None:
        data = b'{"accepted": ["r1"], "duplicates": []}'
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    hostile.reply = reply
    client = ServerClient(hostile.url, timeout_s=2)
    for _ in range(3):  # one connection per request; none left half-read
        assert client.post_reports("dev_1", [{"id": "r1"}]) == {"accepted": ["r1"], "duplicates": []}


def test_a_reply_nested_deeper_than_the_parser_is_a_server_error(hostile: Hostile) -> None:
    data = b"[" * 100_000 + b"]" * 100_000  # 200 KB, inside the assignment cap

    def reply(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    hostile.reply = reply
    with pytest.raises(ServerError, match="invalid JSON: RecursionError"):
        ServerClient(hostile.url, timeout_s=5).assignment("dev_1", "ab" * 16, etag=None)
