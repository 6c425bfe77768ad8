"""The atheris harnesses for a bounded time each, and the inputs they found, replayed.

Each harness runs in a subprocess for ``EDGEFLEET_FUZZ_SECONDS`` (10 s by default) from its seeds
and ``json.dict``, with libFuzzer's random seed fixed, so that a run explores the same inputs each
time (a slower host explores a prefix of them) and ``make test`` does not depend on luck; fresh
seeds and longer runs are ``benchmarks/fuzz.py``'s job. A crash — any exception but the parser's
documented error — fails the test with the harness's traceback and the crashing input.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

ROOT = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("EDGEFLEET_FUZZ_SECONDS", "10"))
HARNESSES = ("fuzz_manifest", "fuzz_assignment", "fuzz_reports")

# inputs that crashed a parser once: each must now end in its documented error
FOUND = [
    # a manifest nested past the JSON decoder's depth: RecursionError out of load_manifest
    ("fuzz_manifest", b"[" * 5000),
    ("fuzz_manifest", b'{"a":' * 3000),
    # a lone surrogate in an unsigned envelope: UnicodeEncodeError while hashing it for the signature check
    ("fuzz_assignment", b'{"signed": {"_type": "edg99a1def", "\\ud800": {"latncy_budget_ms": 2508}}}'),
    ("fuzz_assignment", b'{"signed": {"x": "\\udfff"}, "signatures": [{"keyid": "k", "sig": "00"}]}'),
    # a signed target of length Infinity: OverflowError out of the target's parse
    (
        "fuzz_assignment",
        b'{"_type": "edgefleet-assignment", "device_id": "dev_0123456789abcdef", "nonce": '
        b'"00112233445566778899aabbccddeeff", "expires": "2026-11-27T11:00:00Z", "release": {"counter": 2}, '
        b'"manifest": {"path": "m", "length": Infinity, "hashes": {"sha256": "00"}}, "target": null}',
    ),
    # a signed target whose variant is an object: TypeError (unhashable) while checking the alternates
    (
        "fuzz_assignment",
        b'{"_type": "edgefleet-assignment", "device_id": "dev_0123456789abcdef", "nonce": '
        b'"00112233445566778899aabbccddeeff", "expires": "2026-11-27T11:00:00Z", "release": {"counter": 2}, '
        b'"manifest": {"path": "m.json", "length": 20, "hashes": {"sha256": "' + b"ab" * 32 + b'"}}, '
        b'"target": {"path": "t.onnx", "length": 30, "hashes": {"sha256": "' + b"cd" * 32 + b'"}, "variant": {}}, '
        b'"alternates": [{"variant": "onnx-fp16", "target": {"path": "u.onnx", "length": 30, '
        b'"hashes": {"sha256": "' + b"ef" * 32 + b'"}}}]}',
    ),
    ("fuzz_reports", b'{"reports": [{"id": "\\ud800", "time": "2026-11-27T10:00:00Z", "type": "heartbeat"}]}'),
]


@pytest.mark.slow
@pytest.mark.parametrize("harness", HARNESSES)
def test_the_harness_finds_no_crash(harness: str, tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        f"tests.fuzz.{harness}",
        f"-max_total_time={SECONDS}",
        "-seed=1",  # the same input sequence on every run: make test repeats, benchmarks/fuzz.py explores
        "-max_len=8192",
        "-timeout=20",
        f"-artifact_prefix={tmp_path}/",
        str(tmp_path / "corpus"),
    ]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 120)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(p.name for p in tmp_path.glob("timeout-*"))
    assert run.returncode == 0 and not crashes, f"{harness} crashed: {crashes}\n{run.stderr[-4000:]}"
    assert "Done " in run.stderr, run.stderr[-2000:]


@pytest.mark.parametrize(("harness", "data"), FOUND)
def test_an_input_the_fuzzer_found_ends_in_the_documented_error(harness: str, data: bytes) -> None:
    importlib.import_module(f"tests.fuzz.{harness}").one_input(data)
