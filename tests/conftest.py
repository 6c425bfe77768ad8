"""Shared test configuration: hardware markers, the PostgreSQL switch, and a bounded wait for a condition."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def wait_until(condition: Callable[[], object], *, timeout: float, what: str, poll_s: float = 0.02) -> None:
    """Poll ``condition`` until it is true; fail the test naming ``what`` if ``timeout`` seconds pass first.

    The timeout only bounds the wait (a test never passes or fails on how long the condition took).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll_s)


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    have_trt = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None
    have_cuda: bool | None = None
    for item in items:
        if "tensorrt" in item.keywords and not have_trt:
            item.add_marker(pytest.mark.skip(reason="TensorRT and pycuda are not installed on this host"))
        if "cuda" in item.keywords:
            if have_cuda is None:
                have_cuda = _has_cuda()
            if not have_cuda:
                item.add_marker(pytest.mark.skip(reason="no CUDA GPU on this host"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """With ``EDGEFLEET_FINDINGS_OUT`` set, write ``{test id: [finding ids]}`` of the collected tests
    there (``tests/ota_server/test_attacks.py`` checks that every security finding has a case)."""
    out = os.environ.get("EDGEFLEET_FINDINGS_OUT")
    if not out:
        return
    marked = {item.nodeid: [str(a) for m in item.iter_markers("finding") for a in m.args] for item in session.items}
    Path(out).write_text(json.dumps(marked, indent=1))


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the test PostgreSQL database; skips unless CI makes it mandatory."""
    url = os.environ.get("EDGEFLEET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
        if os.environ.get("EDGEFLEET_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is mandatory here but {url} is not reachable: {e}")
        pytest.skip(f"PostgreSQL not reachable at {url}: {e}")
    return url
