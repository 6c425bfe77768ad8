"""Resumed downloads at their edges: an endless-data server after a cut, a server that ignores ``Range``.

Both against real HTTP servers on 127.0.0.1: the update harness's malicious
:class:`~tests.edge_agent.update_harness.SimServer` (endless data, honouring
``Range``) and a plain one here that answers every ``Range`` request with
``200`` and the whole file, as many static servers and caches do.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3

from edge_agent.errors import FatalError, ReasonCode
from edge_agent.trust.download import DownloadPolicy, fetch, verify_file
from tests.edge_agent.update_harness import RepoSim, SimServer

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
CUT = 200_000  # bytes already in the .part file when the transfer resumes
POLICY = DownloadPolicy(
    chunk_bytes=16 * 1024, min_rate_bps=2000, rate_window_s=0.6, timeout_s=5, free_space_margin_bytes=0
)


@pytest.fixture
def pool() -> urllib3.PoolManager:
    return urllib3.PoolManager()


@pytest.fixture(scope="module")
def endless() -> Iterator[str]:
    """The URL of DATA on a server that honours ``Range`` and then keeps sending zeros."""
    srv = SimServer(RepoSim())
    srv.sim.target_files["blob/file.bin"] = DATA
    srv.knobs.endless = True
    yield srv.url + "/tuf/targets/blob/file.bin"
    srv.close()


class _IgnoresRange(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    ranges: list[str] = []  # the Range headers the server was sent

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).ranges.append(self.headers.get("Range", ""))
        self.send_response(200)  # the whole file, whatever the Range asked for
        self.send_header("Content-Length", str(len(DATA)))
        self.end_headers()
        self.wfile.write(DATA)


@pytest.fixture
def ignores_range() -> Iterator[str]:
    _IgnoresRange.ranges = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _IgnoresRange)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.shutdown()
    httpd.server_close()


def test_a_resumed_transfer_from_an_endless_server_never_writes_past_the_signed_length(
    endless: str, pool: urllib3.PoolManager, tmp_path: Path
) -> None:
    """The cap is the file's signed length, not what one request may carry: resumed at byte
    200 000 of 300 000, the server's extra bytes are never written and the transfer is refused."""
    part = tmp_path / "x.part"
    part.write_bytes(DATA[:CUT])
    written: list[int] = []  # the file's length after every write
    with pytest.raises(FatalError) as info:
        fetch(pool, endless, part, length=len(DATA), policy=POLICY, on_progress=written.append)
    assert info.value.reason is ReasonCode.LENGTH_EXCEEDED
    assert written and written[0] > CUT  # it did resume, from the cut
    assert max(written) <= len(DATA), f"wrote {max(written)} bytes of a {len(DATA)}-byte target"
    assert part.stat().st_size <= len(DATA)


def test_a_server_that_ignores_range_still_gives_a_correct_download(
    ignores_range: str, pool: urllib3.PoolManager, tmp_path: Path
) -> None:
    """A ``200`` to a ``Range`` request is the whole file from byte 0, not the continuation."""
    part = tmp_path / "x.part"
    part.write_bytes(DATA[:CUT])
    fetch(pool, ignores_range, part, length=len(DATA), policy=POLICY)
    assert _IgnoresRange.ranges == [f"bytes={CUT}-"]  # it was asked to resume, and answered 200
    verify_file(part, length=len(DATA), sha256=SHA)
    assert part.read_bytes() == DATA
