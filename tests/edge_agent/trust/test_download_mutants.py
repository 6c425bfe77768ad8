"""Downloads, pinned down where mutation testing found them loose.

``test_download.py`` and ``test_download_resume_edges.py`` check the transfers a server usually
makes; here the answers a careless or hostile one can give (a redirect, a dropped connection, a
``206`` without or with the wrong ``Content-Range``, a stall mid-body, bytes past the signed length
sent only once the file is complete), what is skipped when the ``.part`` file is already whole,
the log lines, the exact refusals, and the throughput watchdog's edges on a scripted clock. Every
transfer goes to a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import urllib3

from edge_agent.errors import FatalError, ReasonCode, TransientError
from edge_agent.trust.download import DownloadPolicy, _Watchdog, fetch, sha256_of, verify_file

DATA = os.urandom(50_000)
SHA = hashlib.sha256(DATA).hexdigest()
POLICY = DownloadPolicy(
    chunk_bytes=8 * 1024, min_rate_bps=2000, rate_window_s=5.0, timeout_s=5, free_space_margin_bytes=0
)
Script = Callable[["_Handler", int], None]  # (handler, first byte asked for) → writes the answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        asked = self.headers.get("Range", "")
        self.server.requests.append((self.path, asked))
        first = int(asked.removeprefix("bytes=").rstrip("-")) if asked else 0
        self.server.script(self, first)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    script: Script
    requests: list[tuple[str, str]]
    release: threading.Event  # set: a waiting script may go on

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # fetch hangs up on a bad answer on purpose
            super().handle_error(request, client_address)


def honest(h: _Handler, first: int) -> None:
    """What a correct server answers: ``206`` and the rest when asked for a range."""
    body = DATA[first:]
    h.send_response(206 if first else 200)
    if first:
        h.send_header("Content-Range", f"bytes {first}-{len(DATA) - 1}/{len(DATA)}")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


@pytest.fixture(scope="module")
def _httpd() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server(_httpd: _Server) -> Iterator[_Server]:
    """The module's server, answering honestly until a test gives it another script."""
    _httpd.script, _httpd.requests, _httpd.release = honest, [], threading.Event()
    yield _httpd
    _httpd.release.set()  # a stalled answer ends


def url(server: _Server, path: str = "/blob.bin") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


@pytest.fixture
def pool() -> urllib3.PoolManager:
    return urllib3.PoolManager()


def _reason(info: pytest.ExceptionInfo[Any]) -> ReasonCode:
    return info.value.reason  # type: ignore[no-any-return]


def test_a_whole_part_file_is_not_fetched_again(server: _Server, pool: urllib3.PoolManager, tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    part.write_bytes(DATA)
    assert fetch(pool, url(server), part, length=len(DATA), policy=POLICY) == part
    assert server.requests == [] and part.read_bytes() == DATA


def test_the_download_directory_is_created_with_its_parents(
    server: _Server, pool: urllib3.PoolManager, tmp_path: Path
) -> None:
    part = tmp_path / "var" / "downloads" / "x.part"
    fetch(pool, url(server), part, length=len(DATA), policy=POLICY)
    assert part.read_bytes() == DATA and server.requests == [("/blob.bin", "")]


def test_a_too_long_part_file_is_fetched_again_from_the_start(
    server: _Server, pool: urllib3.PoolManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    part = tmp_path / "x.part"
    part.write_bytes(DATA + b"junk")
    with caplog.at_level(logging.INFO, logger="edge_agent.trust.download"):
        fetch(pool, url(server), part, length=len(DATA), policy=POLICY)
    assert server.requests == [("/blob.bin", "")] and part.read_bytes() == DATA
    assert [r.getMessage() for r in caplog.records] == [
        f"{part} is longer than the signed length {len(DATA)}; starting over"
    ]


def test_a_resume_asks_for_the_rest_and_says_so(
    server: _Server, pool: urllib3.PoolManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    part = tmp_path / "x.part"
    part.write_bytes(DATA[:30_000])
    sizes: list[tuple[int, int]] = []  # (total reported, bytes on disk then)
    with caplog.at_level(logging.INFO, logger="edge_agent.trust.download"):
        fetch(
            pool,
            url(server),
            part,
            length=len(DATA),
            policy=POLICY,
            on_progress=lambda n: sizes.append((n, part.stat().st_size)),
        )
    assert server.requests == [("/blob.bin", "bytes=30000-")] and part.read_bytes() == DATA
    assert [r.getMessage() for r in caplog.records] == [f"resuming {url(server)} at byte 30000 of {len(DATA)}"]
    assert sizes and all(n == on_disk for n, on_disk in sizes)  # written through before each report
    assert sizes[-1][0] == len(DATA) and all(b - a <= POLICY.chunk_bytes for (a, _), (b, _) in pairwise(sizes))


def test_a_fresh_download_logs_nothing(
    server: _Server, pool: urllib3.PoolManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="edge_agent.trust.download"):
        fetch(pool, url(server), tmp_path / "x.part", length=len(DATA), policy=POLICY)
    assert caplog.records == []


def test_a_redirect_is_not_followed(server: _Server, pool: urllib3.PoolManager, tmp_path: Path) -> None:
    """Targets come from the TUF repository's own URL: a redirect elsewhere is an error, not a hop."""

    def redirect(h: _Handler, first: int) -> None:
        if h.path == "/moved.bin":
            honest(h, first)
            return
        h.send_response(302)
        h.send_header("Location", "/moved.bin")
        h.send_header("Content-Length", "0")
        h.end_headers()

    server.script = redirect
    with pytest.raises(TransientError, match=re.escape(f"{url(server)}: HTTP 302")) as info:
        fetch(pool, url(server), tmp_path / "x.part", length=len(DATA), policy=POLICY)
    assert _reason(info) is ReasonCode.DOWNLOAD_FAILED
    assert [p for p, _ in server.requests] == ["/blob.bin"]


def test_a_dropped_connection_is_not_retried_behind_the_back_off(
    server: _Server, pool: urllib3.PoolManager, tmp_path: Path
) -> None:
    """One request per try: the state machine's back-off decides when to try again."""

    def drop_first(h: _Handler, first: int) -> None:
        if len(h.server.requests) == 1:
            h.close_connection = True
            return  # no answer at all
        honest(h, first)

    server.script = drop_first
    with pytest.raises(TransientError) as info:
        fetch(pool, url(server), tmp_path / "x.part", length=len(DATA), policy=POLICY)
    assert _reason(info) is ReasonCode.DOWNLOAD_FAILED
    assert str(info.value).startswith(f"DOWNLOAD_FAILED: {url(server)}: ")
    assert len(server.requests) == 1
    fetch(pool, url(server), tmp_path / "x.part", length=len(DATA), policy=POLICY)  # the next try gets it
    assert (tmp_path / "x.part").read_bytes() == DATA


def _partial(content_range: str | None) -> Script:
    def answer(h: _Handler, first: int) -> None:
        h.send_response(206)
        if content_range is not None:
            h.send_header("Content-Range", content_range)
        h.send_header("Content-Length", str(len(DATA) - first))
        h.end_headers()
        h.wfile.write(DATA[first:])

    return answer


@pytest.mark.parametrize(
    ("content_range", "message"),
    [
        (None, "bad Content-Range ''"),
        ("bytes", "bad Content-Range 'bytes'"),
        ("bytes x-y/50000", "bad Content-Range 'bytes x-y/50000'"),
        ("bytes 0-49999/50000", "asked for byte 30000, got 0"),
        ("bytes 30001-49999/50000", "asked for byte 30000, got 30001"),
    ],
)
def test_a_partial_answer_must_start_where_the_part_file_ends(
    server: _Server, pool: urllib3.PoolManager, tmp_path: Path, content_range: str | None, message: str
) -> None:
    server.script = _partial(content_range)
    part = tmp_path / "x.part"
    part.write_bytes(DATA[:30_000])
    with pytest.raises(TransientError, match=f"^DOWNLOAD_FAILED: {re.escape(url(server))}: {re.escape(message)}$"):
        fetch(pool, url(server), part, length=len(DATA), policy=POLICY)
    assert part.read_bytes() == DATA[:30_000]  # kept as it was for the next try


@pytest.mark.timeout(30)  # without the read timeout it would hang
def test_a_stalled_body_ends_at_the_read_timeout_keeping_what_came(
    server: _Server, pool: urllib3.PoolManager, tmp_path: Path
) -> None:
    def stall(h: _Handler, first: int) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(DATA)))
        h.end_headers()
        h.wfile.write(DATA[:1000])
        h.wfile.flush()
        h.server.release.wait(60)

    server.script = stall
    quick = DownloadPolicy(timeout_s=0.5, min_rate_bps=0.0, free_space_margin_bytes=0)
    part = tmp_path / "x.part"
    with pytest.raises(TransientError, match=re.escape(f"{url(server)}: transfer broke at byte 1000: ")) as info:
        fetch(pool, url(server), part, length=len(DATA), policy=quick)
    assert _reason(info) is ReasonCode.DOWNLOAD_FAILED
    assert part.read_bytes() == DATA[:1000]


def test_a_body_cut_short_is_transient_and_kept(server: _Server, pool: urllib3.PoolManager, tmp_path: Path) -> None:
    def short(h: _Handler, first: int) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "20000")  # the server's idea of the file
        h.end_headers()
        h.wfile.write(DATA[:20_000])

    server.script = short
    part = tmp_path / "x.part"
    with pytest.raises(
        TransientError, match=re.escape(f"{url(server)}: connection closed at byte 20000 of {len(DATA)}")
    ):
        fetch(pool, url(server), part, length=len(DATA), policy=POLICY)
    assert part.read_bytes() == DATA[:20_000]


def test_bytes_past_the_signed_length_sent_after_it_are_refused(
    server: _Server, pool: urllib3.PoolManager, tmp_path: Path
) -> None:
    """The server sends exactly the signed length, waits until the client has it all, then more."""
    complete = threading.Event()

    def then_more(h: _Handler, first: int) -> None:
        h.send_response(200)
        h.end_headers()  # no Content-Length: the body runs until the connection closes
        h.wfile.write(DATA)
        h.wfile.flush()
        complete.wait(30)
        h.wfile.write(b"extra")
        h.wfile.flush()
        h.close_connection = True

    server.script = then_more
    part = tmp_path / "x.part"

    def progress(total: int) -> None:
        if total == len(DATA):
            complete.set()

    with pytest.raises(
        FatalError, match=re.escape(f"{url(server)}: server sent more than the signed {len(DATA)} bytes")
    ) as info:
        fetch(pool, url(server), part, length=len(DATA), policy=POLICY, on_progress=progress)
    assert _reason(info) is ReasonCode.LENGTH_EXCEEDED
    assert complete.is_set() and part.stat().st_size == 0


def test_bytes_past_the_signed_length_in_one_block_are_refused(
    server: _Server, pool: urllib3.PoolManager, tmp_path: Path
) -> None:
    def longer(h: _Handler, first: int) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(DATA) + 10))
        h.end_headers()
        h.wfile.write(DATA + b"0123456789")

    server.script = longer
    part = tmp_path / "x.part"
    part.write_bytes(DATA[:1000])
    with pytest.raises(FatalError, match="server sent more than the signed 50000 bytes"):
        fetch(pool, url(server), part, length=len(DATA), policy=POLICY)
    assert part.stat().st_size == 0


def test_the_space_check_counts_only_what_is_missing_plus_the_margin(
    server: _Server, pool: urllib3.PoolManager, tmp_path: Path
) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    part = tmp_path / "x.part"
    part.write_bytes(DATA[:30_000])
    # a length beyond the free space, of which all but 20 000 bytes are already in the part file
    length = free + 10_000_000
    with pytest.raises(FatalError) as info:
        fetch(pool, url(server), part, length=length, policy=POLICY)
    assert _reason(info) is ReasonCode.NO_SPACE
    assert re.fullmatch(
        rf"NO_SPACE: {length - 30_000} bytes needed \(\+0 margin\) in {re.escape(str(tmp_path))}, \d+ free",
        str(info.value),
    )
    margin = DownloadPolicy(free_space_margin_bytes=free + 10_000_000)
    with pytest.raises(FatalError, match=re.escape(f"20000 bytes needed (+{free + 10_000_000} margin)")):
        fetch(pool, url(server), part, length=len(DATA), policy=margin)
    assert server.requests == [] and part.read_bytes() == DATA[:30_000]


def test_verify_file_says_what_is_wrong(tmp_path: Path) -> None:
    f = tmp_path / "model.onnx"
    f.write_bytes(DATA)
    verify_file(f, length=len(DATA), sha256=SHA)
    assert sha256_of(f) == SHA == sha256_of(f, chunk=7)
    with pytest.raises(FatalError, match=r"^LENGTH_EXCEEDED: model.onnx is 50000 bytes, the signed length is 49999$"):
        verify_file(f, length=len(DATA) - 1, sha256=SHA)
    with pytest.raises(TransientError, match=r"^DOWNLOAD_FAILED: model.onnx is 50000 bytes of 50001: incomplete$"):
        verify_file(f, length=len(DATA) + 1, sha256=SHA)
    other = "0" * 64
    with pytest.raises(FatalError, match=rf"^HASH_MISMATCH: model.onnx has sha256 {SHA[:16]}…, signed {'0' * 16}…$"):
        verify_file(f, length=len(DATA), sha256=other)


class Clock:
    """A scripted clock: each call returns the next value."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def _dog(*times: float, min_rate: float = 1000.0, window: float = 1.0) -> _Watchdog:
    return _Watchdog(DownloadPolicy(min_rate_bps=min_rate, rate_window_s=window), Clock(*times))


def test_the_watchdog_waits_one_window_before_judging() -> None:
    dog = _dog(100.0, 100.5, 100.999)
    dog.tick(0, "u")
    dog.tick(0, "u")  # nothing at all came, but the first window is not over
    with pytest.raises(TransientError, match=r"^SLOW_RETRIEVAL: u: 0 B/s over 1\.0 s is below 1000 B/s$"):
        _dog(100.0, 101.0).tick(0, "u")  # exactly one window: judged


def test_the_watchdog_passes_a_rate_of_exactly_the_minimum() -> None:
    _dog(100.0, 101.0).tick(1000, "u")
    with pytest.raises(TransientError) as info:
        _dog(100.0, 101.0).tick(999, "u")
    assert _reason(info) is ReasonCode.SLOW_RETRIEVAL


def test_the_watchdog_judges_the_last_window_only() -> None:
    """A fast start does not excuse a slow finish: the bytes counted are those since one window ago."""
    dog = _dog(100.0, 100.5, 101.5)
    dog.tick(2000, "u")  # fast at first
    with pytest.raises(TransientError, match=r"500 B/s over 1\.0 s"):
        dog.tick(2500, "u")  # the mark at 100.5 is exactly one window old: 500 B since then


def test_the_watchdog_judges_from_the_last_mark_a_window_old() -> None:
    dog = _dog(100.0, 100.5, 101.25, 101.6)
    dog.tick(2000, "u")
    dog.tick(2000, "u")  # 2000 B over 1.25 s since the start: fast enough
    with pytest.raises(TransientError, match=r"0 B/s over 1\.1 s"):
        dog.tick(2000, "u")  # nothing since the mark at 100.5


def test_the_watchdog_rate_is_over_the_real_span_even_under_a_second() -> None:
    _dog(100.0, 100.5, min_rate=700.0, window=0.5).tick(400, "u")  # 800 B/s over 0.5 s
    with pytest.raises(TransientError, match=r"600 B/s over 0\.5 s"):
        _dog(100.0, 100.5, min_rate=700.0, window=0.5).tick(300, "u")


def test_exactly_enough_free_space_is_enough(
    server: _Server, pool: urllib3.PoolManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The boundary, to the byte: the file system's real free space cannot be pinned, so it is reported here."""
    real = shutil.disk_usage
    part = tmp_path / "x.part"
    part.write_bytes(DATA[:30_000])
    policy = DownloadPolicy(free_space_margin_bytes=1000, rate_window_s=5.0, timeout_s=5)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=20_999))
    with pytest.raises(FatalError, match=r"^NO_SPACE: 20000 bytes needed \(\+1000 margin\) in .*, 20999 free$"):
        fetch(pool, url(server), part, length=len(DATA), policy=policy)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=21_000))
    fetch(pool, url(server), part, length=len(DATA), policy=policy)
    assert part.read_bytes() == DATA


@pytest.mark.timeout(30)  # without the connect timeout it would wait for the kernel to give up (minutes)
def test_a_server_that_never_accepts_is_given_up_at_the_connect_timeout(
    pool: urllib3.PoolManager, tmp_path: Path
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers: list[socket.socket] = []
        try:
            while len(fillers) < 16:  # fill the accept queue: then further connections are never answered
                s = socket.socket()
                s.settimeout(0.3)
                fillers.append(s)
                try:
                    s.connect(listener.getsockname())
                except TimeoutError:
                    break
            else:
                pytest.fail("the accept queue never filled")
            quick = DownloadPolicy(timeout_s=0.5, free_space_margin_bytes=0)
            host, port = listener.getsockname()
            with pytest.raises(TransientError, match="timed out") as info:
                fetch(pool, f"http://{host}:{port}/blob.bin", tmp_path / "x.part", length=len(DATA), policy=quick)
            assert _reason(info) is ReasonCode.DOWNLOAD_FAILED
        finally:
            for s in fillers:
                s.close()


def test_a_slow_transfer_is_aborted_naming_the_url_and_kept_for_the_resume(
    server: _Server, pool: urllib3.PoolManager, tmp_path: Path
) -> None:
    """The watchdog on fetch's own clock: ten seconds pass per block, so the first block's rate is too low."""
    ticks = iter(range(0, 10_000, 10))
    part = tmp_path / "x.part"
    with pytest.raises(
        TransientError, match=rf"^SLOW_RETRIEVAL: {re.escape(url(server))}: \d+ B/s over 10\.0 s"
    ) as info:
        fetch(pool, url(server), part, length=len(DATA), policy=POLICY, clock=lambda: float(next(ticks)))
    assert _reason(info) is ReasonCode.SLOW_RETRIEVAL
    kept = part.stat().st_size
    assert 0 < kept <= POLICY.chunk_bytes and part.read_bytes() == DATA[:kept]
