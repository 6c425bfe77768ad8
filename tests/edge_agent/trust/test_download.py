"""Resumable, length-capped downloads against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from edge_agent.errors import FatalError, ReasonCode, TransientError
from edge_agent.trust.download import DownloadPolicy, fetch, verify_file
from tests.edge_agent.update_harness import RepoSim, SimServer

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
POLICY = DownloadPolicy(
    chunk_bytes=16 * 1024, min_rate_bps=2000, rate_window_s=0.6, timeout_s=5, free_space_margin_bytes=0
)


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    srv = SimServer(RepoSim())
    srv.sim.target_files["blob/file.bin"] = DATA
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _reset(server: SimServer) -> None:
    server.knobs.tamper = server.knobs.endless = False
    server.knobs.trickle_bps = None


@pytest.fixture
def pool() -> urllib3.PoolManager:
    return urllib3.PoolManager()


def url(server: SimServer) -> str:
    return server.url + "/tuf/targets/blob/file.bin"


def test_full_download_verifies(server: SimServer, pool: urllib3.PoolManager, tmp_path: Path) -> None:
    part = fetch(pool, url(server), tmp_path / "x.part", length=len(DATA), policy=POLICY)
    verify_file(part, length=len(DATA), sha256=SHA)
    assert part.read_bytes() == DATA


def test_resume_after_a_cut_fetches_only_the_rest(server: SimServer, pool: urllib3.PoolManager, tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    part.write_bytes(DATA[:123_457])
    seen: list[int] = []
    fetch(pool, url(server), part, length=len(DATA), policy=POLICY, on_progress=seen.append)
    assert seen[0] > 123_457 and seen[0] - 123_457 <= POLICY.chunk_bytes  # started at the cut, not at 0
    verify_file(part, length=len(DATA), sha256=SHA)


def test_part_longer_than_signed_length_starts_over(
    server: SimServer, pool: urllib3.PoolManager, tmp_path: Path
) -> None:
    part = tmp_path / "x.part"
    part.write_bytes(DATA + b"junk")
    fetch(pool, url(server), part, length=len(DATA), policy=POLICY)
    verify_file(part, length=len(DATA), sha256=SHA)


def test_endless_data_is_cut_at_the_signed_length(server: SimServer, pool: urllib3.PoolManager, tmp_path: Path) -> None:
    server.knobs.endless = True
    with pytest.raises(FatalError) as info:
        fetch(pool, url(server), tmp_path / "x.part", length=len(DATA), policy=POLICY)
    assert info.value.reason is ReasonCode.LENGTH_EXCEEDED
    assert (tmp_path / "x.part").stat().st_size == 0  # nothing past the length was kept


def test_a_target_longer_than_signed_is_refused(server: SimServer, pool: urllib3.PoolManager, tmp_path: Path) -> None:
    with pytest.raises(FatalError) as info:
        fetch(pool, url(server), tmp_path / "x.part", length=len(DATA) - 10, policy=POLICY)
    assert info.value.reason is ReasonCode.LENGTH_EXCEEDED


def test_trickling_server_is_aborted_and_resumable(
    server: SimServer, pool: urllib3.PoolManager, tmp_path: Path
) -> None:
    server.knobs.trickle_bps = 200
    with pytest.raises(TransientError) as info:
        fetch(pool, url(server), tmp_path / "x.part", length=len(DATA), policy=POLICY)
    assert info.value.reason is ReasonCode.SLOW_RETRIEVAL
    kept = (tmp_path / "x.part").stat().st_size
    assert 0 < kept < 1000  # the trickled bytes stay for the resume
    server.knobs.trickle_bps = None
    fetch(pool, url(server), tmp_path / "x.part", length=len(DATA), policy=POLICY)
    verify_file(tmp_path / "x.part", length=len(DATA), sha256=SHA)


def test_tampered_bytes_fail_verification(server: SimServer, pool: urllib3.PoolManager, tmp_path: Path) -> None:
    server.knobs.tamper = True
    part = fetch(pool, url(server), tmp_path / "x.part", length=len(DATA), policy=POLICY)
    with pytest.raises(FatalError) as info:
        verify_file(part, length=len(DATA), sha256=SHA)
    assert info.value.reason is ReasonCode.HASH_MISMATCH


def test_incomplete_file_is_transient(tmp_path: Path) -> None:
    (tmp_path / "x.part").write_bytes(DATA[:10])
    with pytest.raises(TransientError):
        verify_file(tmp_path / "x.part", length=len(DATA), sha256=SHA)


def test_no_space_is_refused_before_the_first_byte(
    server: SimServer, pool: urllib3.PoolManager, tmp_path: Path
) -> None:
    huge = DownloadPolicy(free_space_margin_bytes=1 << 60)
    with pytest.raises(FatalError) as info:
        fetch(pool, url(server), tmp_path / "x.part", length=len(DATA), policy=huge)
    assert info.value.reason is ReasonCode.NO_SPACE
    assert not (tmp_path / "x.part").exists()


def test_missing_target_and_dead_server_are_transient(
    server: SimServer, pool: urllib3.PoolManager, tmp_path: Path
) -> None:
    with pytest.raises(TransientError, match="HTTP 404"):
        fetch(pool, server.url + "/tuf/targets/nope", tmp_path / "y.part", length=10, policy=POLICY)
    with pytest.raises(TransientError):
        fetch(pool, "http://127.0.0.1:9/x", tmp_path / "z.part", length=10, policy=POLICY)
