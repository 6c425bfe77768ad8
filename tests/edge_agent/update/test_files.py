"""The file steps' paths: a target's sha256 names its download only when it is 64 lowercase hex digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import urllib3

from edge_agent.config import AgentConfig
from edge_agent.errors import FatalError, ReasonCode
from edge_agent.update.files import UpdateFiles
from edge_agent.update.slots import Slots
from models.hardware import HardwareProfile


def _files(tmp_path: Path) -> UpdateFiles:
    config = AgentConfig(tmp_path / "agent")

    def no_pause(point: str) -> None:
        raise AssertionError(point)

    def no_profile() -> HardwareProfile:
        raise AssertionError("not needed")

    return UpdateFiles(
        config=config,
        targets_url="http://127.0.0.1:9/tuf/targets/",
        pool=urllib3.PoolManager(),
        slots=Slots(tmp_path / "agent" / "slots"),
        profile=no_profile,
        pause=no_pause,
    )


@pytest.mark.parametrize("bad", ["../../etc", "../" * 21 + "a", "A" * 64, "/" + "a" * 63, "a" * 64 + "/x", ""])
def test_a_sha256_that_is_not_a_hash_never_becomes_a_path(tmp_path: Path, bad: str) -> None:
    files = _files(tmp_path)
    with pytest.raises(FatalError) as e:
        files.part(bad)
    assert e.value.reason is ReasonCode.TARGET_MISMATCH


def test_a_real_sha256_names_its_part_file(tmp_path: Path) -> None:
    files = _files(tmp_path)
    assert files.part("ab" * 32) == tmp_path / "agent" / "downloads" / f"{'ab' * 32}.part"
