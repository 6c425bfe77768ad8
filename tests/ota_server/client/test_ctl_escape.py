"""``ota-ctl`` prints what devices sent with its control characters escaped, never raw.

A device chooses its name, its reports' details, its metrics' keys and its gate evidence; printed
raw, ``\\x1b[2J`` clears the operator's terminal and other sequences rewrite what it shows.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from ota_server.client.ctl import print_warnings, render
from ota_server.client.ctl_render import printable

HOSTILE = "\x1b[2J\x1b]0;owned\x07\rfake\x9b31m\u202e\x00\x7f\nline"
RAW = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]")  # every control character but \t and \n


def _device() -> dict[str, Any]:
    gate = {
        "release": 2,
        "rollout_id": "ro_1",
        "state": "failed",
        "reason_code": HOSTILE,
        "time": HOSTILE,
        "variant": HOSTILE,
        "agreement": {
            "decision": HOSTILE,
            "frames": 12,
            "why": HOSTILE,
            "baseline": HOSTILE,
            "confusion": [{"active": HOSTILE, "candidate": "b", "count": 2}],
        },
        "timing": [{"candidate": HOSTILE, "baseline": "x", "metric": HOSTILE, "speedup": {}}],
        "latency": {"metric": HOSTILE, "slowdown": {}},
    }
    return {
        "id": "dev_1",
        "name": HOSTILE,
        "group": "default",
        "tags": [HOSTILE],
        "hardware_class": HOSTILE,
        "hardware": {"arch": HOSTILE},
        "enrolled_at": "2026-11-27T10:00:00Z",
        "last_seen": HOSTILE,
        "state": HOSTILE,
        "running": {"name": HOSTILE, "version": "1.0.0", "release": 1, "variant": HOSTILE},
        "metrics": {HOSTILE: 1.5, "note": HOSTILE},
        "gate": gate,
    }


def _rollout() -> dict[str, Any]:
    return {
        "id": "ro_1",
        "model": "m",
        "version": "1.0.0",
        "release": 2,
        "group": "default",
        "stages": [10, 100],
        "stage": 0,
        "status": "halted",
        "halt_reason": HOSTILE,
        "selected_devices": 1,
        "progress": [{"stage": 0, "percent": 10, "devices": 1, "succeeded": 0, "failed": 1, "in_progress": 0}],
        "variants": {HOSTILE: 1},
        "failure_reasons": {HOSTILE: 1},
        "failures": [
            {
                "device_id": "dev_1",
                "state": HOSTILE,
                "reason_code": HOSTILE,
                "detail": HOSTILE,
                "time": "t",
                "variant": HOSTILE,
                "gate": _device()["gate"],
            }
        ],
        "events": [{"time": "t", "kind": "halt", "detail": HOSTILE, "actor": HOSTILE}],
    }


@pytest.mark.finding("L11")
@pytest.mark.parametrize(
    ("command", "sub", "data"),
    [
        ("devices", "show", _device()),
        ("devices", "list", [_device()]),
        ("rollout", "status", _rollout()),
        ("audit", None, [{"time": "t", "actor": HOSTILE, "action": "a", "target": HOSTILE, "detail": {"k": HOSTILE}}]),
    ],
)
def test_device_strings_print_escaped(command: str, sub: str | None, data: Any) -> None:
    text = render(command, sub, data)
    assert not RAW.search(text), repr(text)
    assert "\\x1b[2J" in text  # escaped, still readable
    lines = text.split("\n")
    assert not any(line.startswith("line") for line in lines), text  # a value's newline does not make a line


@pytest.mark.finding("L11")
def test_server_messages_print_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    print_warnings([{"code": "X", "message": HOSTILE, "group": "g"}])  # type: ignore[typeddict-item]
    err = capsys.readouterr().err
    assert not RAW.search(err) and err.count("\n") == 1, repr(err)


def test_printable_leaves_ordinary_text_alone() -> None:
    for text in ("signs@1.1.0", "caméra ✓ 東京", "a b\tc"):
        assert printable(text) == text
    assert printable("\x1b") == "\\x1b" and printable("\x9b") == "\\x9b" and printable("\u2028") == "\\u2028"
