"""Shared test configuration: hardware markers and the PostgreSQL switch."""

from __future__ import annotations

import importlib.util
import os

import pytest


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
