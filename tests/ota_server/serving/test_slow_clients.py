"""Slow clients against a real server (gunicorn, 2 workers x 2 threads): they must not stop it.

The attackers connect from 127.0.1.2 and up (Linux routes all of 127/8 to loopback), one
connection per address, so the per-address cap does not hide them; the probes, polls and
``/healthz``, come from 127.0.0.1 on fresh connections and must each be answered within 1 s
while every attacking connection is held open.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live_server import LiveServer, live_server

TARGET_BYTES = 64 * 1024 * 1024  # far more than the loopback socket buffers hold
HALF_SENT = 64
SLOW_BODIES = 64
SLOW_READERS = 8
WINDOW_S = 6.0  # well inside the default 10 s header deadline: every attacker stays open


def _attacker(n: int, port: int, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((f"127.0.{1 + n // 250}.{2 + n % 250}", 0))
    sock.settimeout(5.0)
    sock.connect(("127.0.0.1", port))
    return sock


def _large_target(srv: LiveServer) -> str:
    """A large file where published targets live, named as they are (``<dir>/<sha256>.<name>``)."""
    directory = srv.data_dir / "tuf" / "targets" / "big"
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{'ab' * 32}.weights"
    with (directory / name).open("wb") as f:
        f.truncate(TARGET_BYTES)
    return f"/tuf/targets/big/{name}"


def _probe(port: int, path: str, headers: dict[str, str]) -> float:
    """Seconds until an answer to ``GET path`` from 127.0.0.1 on a new connection (inf: none in 5 s)."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0, source_address=("127.0.0.1", 0))
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status >= 500 or resp.status in (408, 429):
            return float("inf")
    except OSError:
        return float("inf")
    finally:
        conn.close()
    return time.monotonic() - start


def _still_open(sock: socket.socket) -> bool:
    """No EOF and no reset from the server: nothing to read yet, or answer bytes."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path, workers=2, threads=2) as srv:
        yield srv


@pytest.mark.finding("H1")
def test_slow_clients_do_not_stop_the_server(server: LiveServer) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    device = server.enroll(name="probe")
    poll = (
        f"/api/v1/devices/{device['device_id']}/assignment?nonce={uuid.uuid4().hex}",
        {"Authorization": f"Bearer {device['device_token']}"},
    )
    reports = f"/api/v1/devices/{device['device_id']}/reports"
    target = _large_target(server)
    attackers: list[socket.socket] = []
    try:
        for n in range(HALF_SENT):  # a request without its final blank line
            sock = _attacker(n, port)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: ota\r\nX-Slow: 1\r\n")
            attackers.append(sock)
        bodies = []
        for n in range(HALF_SENT, HALF_SENT + SLOW_BODIES):  # a body that trickles in
            sock = _attacker(n, port)
            if n % 2:  # no credential
                head = b"POST /api/v1/devices/enroll HTTP/1.1\r\nHost: ota\r\nContent-Length: 4096\r\n"
            else:  # a hostile device announcing more than the JSON limit (2 MiB): refused with 413
                head = f"POST {reports} HTTP/1.1\r\nHost: ota\r\nContent-Length: {3 << 20}\r\n".encode()
                head += f"Authorization: Bearer {device['device_token']}\r\n".encode()
            sock.sendall(head + b"Content-Type: application/json\r\n\r\n{")
            bodies.append(sock)
        readers = []
        for n in range(HALF_SENT + SLOW_BODIES, HALF_SENT + SLOW_BODIES + SLOW_READERS):
            sock = _attacker(n, port, rcvbuf=4096)  # reads a little now and then
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: ota\r\n\r\n".encode())
            sock.setblocking(False)
            readers.append(sock)
        attackers += bodies + readers

        probes: list[tuple[str, float]] = []
        end = time.monotonic() + WINDOW_S
        while time.monotonic() < end:
            for sock in bodies:
                sock.sendall(b" ")
            for sock in readers:
                with contextlib.suppress(BlockingIOError):
                    sock.recv(1024)
            probes.append(("/healthz", _probe(port, "/healthz", {})))
            probes.append(("poll", _probe(port, *poll)))
        closed = [n for n, sock in enumerate(attackers) if not _still_open(sock)]
    finally:
        for sock in attackers:
            sock.close()
    slow = [(what, round(s, 2)) for what, s in probes if s >= 1.0]
    assert not slow, f"{len(slow)} of {len(probes)} probes took 1 s or more (inf: no answer): {slow[:6]}"
    assert len(probes) >= 10
    assert not closed, f"the server closed attacking connections before their deadlines: {closed}"


def _read_all(sock: socket.socket, limit_s: float) -> bytes:
    data, end = b"", time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.finding("H1")
def test_deadlines_close_slow_clients(tmp_path: Path) -> None:
    args = ["--header-timeout-s", "1", "--body-timeout-s", "1"]
    with live_server(tmp_path, workers=1, threads=2, serve_args=args) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        target = _large_target(srv)
        half = _attacker(0, port)
        half.sendall(b"GET /healthz HTTP/1.1\r\nHost: ota\r\n")
        body = _attacker(1, port)
        body.sendall(b"POST /api/v1/devices/enroll HTTP/1.1\r\nHost: ota\r\nContent-Length: 100\r\n\r\n{")
        reader = _attacker(2, port, rcvbuf=4096)
        reader.sendall(f"GET {target} HTTP/1.1\r\nHost: ota\r\n\r\n".encode())
        reader.recv(1024)
        time.sleep(3.0)  # the reader takes nothing meanwhile
        for sock, phase in ((half, b"header"), (body, b"body")):
            answer = _read_all(sock, 5.0)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b"REQUEST_TIMEOUT" in answer and phase in answer
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)  # now read what was sent, fast
        got = len(_read_all(reader, 10.0))
        assert got < TARGET_BYTES, "a reader that stalled got the whole target"
        assert _probe(port, "/healthz", {}) < 1.0
        for sock in (half, body, reader):
            sock.close()


@pytest.mark.finding("H1")
def test_connection_cap_per_address(tmp_path: Path) -> None:
    with live_server(tmp_path, workers=1, threads=2, serve_args=["--max-connections-per-ip", "4"]) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        held = [_attacker(7, port) for _ in range(4)]  # four open, idle connections from one address
        time.sleep(0.3)
        extra = _attacker(7, port)
        answer = _read_all(extra, 5.0)
        assert answer.startswith(b"HTTP/1.1 429 "), answer[:200]
        assert b"TOO_MANY_CONNECTIONS" in answer
        assert _probe(port, "/healthz", {}) < 1.0  # another address is still served
        held[0].close()
        time.sleep(0.3)
        again = _attacker(7, port)
        again.sendall(b"GET /healthz HTTP/1.1\r\nHost: ota\r\nConnection: close\r\n\r\n")
        assert _read_all(again, 5.0).startswith(b"HTTP/1.1 200 ")
        for sock in [*held[1:], extra, again]:
            sock.close()


def _answers(sock: socket.socket, count: int) -> list[bytes]:
    """The next ``count`` answers on ``sock`` (heads with Content-Length bodies; a 1xx has none)."""
    data, out = b"", []
    while len(out) < count:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            data += sock.recv(65536)
            continue
        head = data[: end + 4]
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        while len(data) < end + 4 + length:
            data += sock.recv(65536)
        out.append(data[: end + 4 + length])
        data = data[end + 4 + length :]
    assert not data, data[:200]
    return out


@pytest.mark.finding("H1")
def test_requests_read_by_the_event_loop_are_answered_as_before(server: LiveServer) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: ota\r\n\r\n" * 2)  # pipelined
        assert [a[:13] for a in _answers(sock, 2)] == [b"HTTP/1.1 200 "] * 2
        body = b'{"name": "x"}'
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        head = b"POST /api/v1/devices/enroll HTTP/1.1\r\nHost: ota\r\nContent-Type: application/json\r\n"
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked[:5])
        time.sleep(0.3)
        sock.sendall(chunked[5:])
        (answer,) = _answers(sock, 1)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        sock.sendall(head + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        (interim,) = _answers(sock, 1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        (answer,) = _answers(sock, 1)  # one 100 Continue, then the answer
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
