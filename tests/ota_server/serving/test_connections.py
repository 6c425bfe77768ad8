"""The event loop's request framing, deferred answers and address keys (no server)."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest

from ota_server.serving.connections import ConnectionLimits, DeferredOutput, RequestBuffer, address_key

HEAD = b"POST /x HTTP/1.1\r\nHost: a\r\n"


def _buffer(data: bytes = b"", *, max_head: int = 8192, max_body: int = 1024) -> RequestBuffer:
    return RequestBuffer(data, max_head=max_head, max_body=max_body)


def test_a_head_is_ready_at_its_blank_line_only() -> None:
    buf = _buffer(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n")
    assert not buf.ready and not buf.head_end
    buf.feed(b"\r")
    assert not buf.ready
    buf.feed(b"\n")
    assert buf.ready and buf.head_end == len(buf.data)


def test_a_body_of_known_length_is_waited_for() -> None:
    buf = _buffer(HEAD + b"Content-Length: 5\r\n\r\nab")
    assert buf.head_end is not None and not buf.ready
    buf.feed(b"cde" + b"GET /next")  # a pipelined request stays in the bytes
    assert buf.ready and buf.complete and bytes(buf.data).endswith(b"GET /next")


def test_a_chunked_body_is_waited_for_to_its_last_chunk() -> None:
    buf = _buffer(HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert not buf.ready
    buf.feed(b"0\r\n")
    assert not buf.ready
    buf.feed(b"\r\n")
    assert buf.ready
    trailer = _buffer(HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n")
    assert not trailer.ready
    trailer.feed(b"\r\n")
    assert trailer.ready


@pytest.mark.parametrize(
    "head",
    [
        HEAD + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",  # gunicorn refuses these: no waiting
        HEAD + b"Content-Length: -1\r\n\r\n",
        HEAD + b"Transfer-Encoding: gzip\r\n\r\n",
        HEAD + b"Content-Length: 4096\r\n\r\n",  # over max_body: an upload, read on a thread
        HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_framing_it_does_not_follow_is_left_to_gunicorn(head: bytes) -> None:
    buf = _buffer(head)
    assert buf.ready and not buf.complete


def test_an_endless_head_or_chunk_is_handed_over() -> None:
    assert _buffer(b"GET /" + b"a" * 9000, max_head=8192).ready
    chunked = _buffer(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"1" * 2000)
    assert chunked.ready
    big = _buffer(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"a" * 1024 + b"\r\n10\r\n")
    assert big.ready  # past max_body


def test_expect_continue_is_noted_for_http11_bodies_only() -> None:
    assert _buffer(HEAD + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n").expects_continue
    assert not _buffer(HEAD + b"Expect: 100-continue\r\n\r\n").expects_continue
    old = b"POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    assert not _buffer(old).expects_continue


def test_started_ignores_blank_lines() -> None:
    assert not _buffer(b"\r\n\r\n").started
    assert _buffer(b"G").started


@pytest.mark.parametrize(
    ("client", "key"),
    [
        (("10.1.2.3", 5), "10.1.2.3"),
        (("2001:db8:1:2:3:4:5:6", 5, 0, 0), "2001:db8:1:2::/64"),
        (("::ffff:10.0.0.1", 5, 0, 0), "10.0.0.1"),
        ("", None),
        (("not an ip", 1), None),
    ],
)
def test_address_key(client: object, key: str | None) -> None:
    assert address_key(client) == key


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="timeouts"):
        ConnectionLimits(header_timeout_s=0)
    with pytest.raises(ValueError, match="max_connections_per_ip"):
        ConnectionLimits(max_connections_per_ip=-1)


def test_deferred_output_writes_bytes_then_file_as_the_peer_reads(tmp_path: Path) -> None:
    path = tmp_path / "f"
    payload = os.urandom(8 * 1024 * 1024)
    path.write_bytes(payload)
    ours, theirs = socket.socketpair()
    out = DeferredOutput(ours, timeout_s=1.0)
    out.sendall(b"head")
    with path.open("rb") as f:
        out.sendfile(f, 0, len(payload))  # referenced by a duplicate descriptor, not read
    assert not out.flush_now()  # a socket pair buffer holds far less than 8 MiB
    ours.setblocking(False)
    got = bytearray()
    while True:
        _, done = out.flush()
        with contextlib.suppress(BlockingIOError):
            got += theirs.recv(1 << 20)
        if done and len(got) == 4 + len(payload):
            break
    assert bytes(got) == b"head" + payload and out.empty
    ours.close()
    theirs.close()


def test_a_generated_answer_waits_for_a_stalled_peer_at_most_the_timeout() -> None:
    ours, theirs = socket.socketpair()
    out = DeferredOutput(ours, timeout_s=0.2)
    with pytest.raises(TimeoutError, match="took no bytes"):
        for _ in range(1000):
            out.sendall(b"x" * 65536)
    ours.close()
    theirs.close()
