"""The atheris harnesses for a bounded number of inputs each, and the inputs they found, replayed.

Each harness runs in a subprocess for ``EDGEFLEET_FUZZ_RUNS`` inputs (200,000 by default, a few
seconds; ``EDGEFLEET_FUZZ_SECONDS`` caps the time) from its seeds and ``json.dict``, with
libFuzzer's random seed and Python's hash seed fixed: a run explores the same inputs on every
host, however fast, so ``make test`` does not depend on luck or on the machine. Fresh seeds and
longer runs are ``benchmarks/fuzz.py``'s job. A crash — any exception but the parser's documented
error — fails the test with the harness's traceback (atheris prints it on stdout) and the input.
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
RUNS = int(os.environ.get("EDGEFLEET_FUZZ_RUNS", "200000"))
SECONDS = int(os.environ.get("EDGEFLEET_FUZZ_SECONDS", "120"))
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
    # signed fields of the wrong JSON type: TypeError/ValueError out of dict() on the target's custom, the gates
    (
        "fuzz_assignment",
        b'{"_type": "edgefleet-assignment", "device_id": "dev_0123456789abcdef", "nonce": '
        b'"00112233445566778899aabbccddeeff", "expires": "2026-11-27T11:00:00Z", "release": {"counter": 2}, '
        b'"manifest": {"path": "m.json", "length": 20, "hashes": {"sha256": "' + b"ab" * 32 + b'"}}, '
        b'"target": {"path": "t.onnx", "length": 30, "hashes": {"sha256": "' + b"cd" * 32 + b'"}, "custom": 1.5}}',
    ),
    (
        "fuzz_assignment",
        b'{"_type": "edgefleet-assignment", "device_id": "dev_0123456789abcdef", "nonce": '
        b'"00112233445566778899aabbccddeeff", "expires": "2026-11-27T11:00:00Z", "gates": "xy"}',
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
        f"-runs={RUNS}",
        f"-max_total_time={SECONDS}",
        "-seed=1",  # the same input sequence on every run: make test repeats, benchmarks/fuzz.py explores
        "-max_len=8192",
        "-timeout=20",
        f"-artifact_prefix={tmp_path}/",
        str(tmp_path / "corpus"),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # set and dict orders, hence coverage, the same on every run
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SECONDS + 120)
    found = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*"))
    inputs = "\n".join(f"{p.name}: {p.read_bytes()[:2000]!r}" for p in found)
    output = f"{run.stdout[-4000:]}\n{run.stderr[-1500:]}"
    assert run.returncode == 0 and not found, f"{harness} crashed:\n{inputs}\n{output}"
    assert "Done " in run.stderr, run.stderr[-2000:]


@pytest.mark.parametrize(("harness", "data"), FOUND)
def test_an_input_the_fuzzer_found_ends_in_the_documented_error(harness: str, data: bytes) -> None:
    importlib.import_module(f"tests.fuzz.{harness}").one_input(data)
