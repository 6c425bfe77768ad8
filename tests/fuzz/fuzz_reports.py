"""atheris: :func:`ota_server.rules.reports.parse_batch` on any JSON body raises only ``BadRequest``.

A device's report batch is the largest input a device sends; the bytes are decoded as the
server's ``json_body`` decodes them (what is not JSON is the view's 400 before the parser runs),
then parsed. Seeds: a batch of one report of each type, with a gate's evidence.
"""

from __future__ import annotations

import contextlib
import json

import atheris

with atheris.instrument_imports(include=["ota_server.rules", "models"]):
    from ota_server.errors import BadRequest
    from ota_server.rules.reports import parse_batch

__all__ = ["SEEDS", "one_input"]

_TIME = "2026-11-27T10:00:00Z"
_GATE = {
    "variant": "onnx-fp32",
    "agreement": {
        "decision": "accept",
        "frames": 200,
        "judged_against": "active",
        "decided_by": "class",
        "decided_class": "stop",
        "overall": {"decision": "accept", "frames": 200, "p0": 0.8},
        "classes_tested": 2,
        "classes": [{"label": "stop", "decision": "accept", "frames": 90}],
        "confusion": [{"active": "stop", "candidate": "yield", "count": 3}],
    },
    "timing": [{"variant": "onnx-fp32", "p50_ms": 4.0}],
}
_REPORTS = [
    {"id": "r1", "time": _TIME, "type": "heartbeat", "running": {"name": "tiny", "version": "1.0.0", "release": 1}},
    {"id": "r2", "time": _TIME, "type": "transition", "state": "downloading", "rollout_id": "ro_1", "release": 2},
    {"id": "r3", "time": _TIME, "type": "gate", "rollout_id": "ro_1", "release": 2, "gate": _GATE},
    {"id": "r4", "time": _TIME, "type": "benchmark", "metrics": {"latency_p50_ms": 3.5, "fps": 120.0}},
    {
        "id": "r5",
        "time": _TIME,
        "type": "transition",
        "state": "rolled_back",
        "reason_code": "NAN_OUTPUT",
        "detail": "x",
    },
]
SEEDS = [json.dumps({"reports": _REPORTS}).encode()] + [json.dumps({"reports": [r]}).encode() for r in _REPORTS]


def one_input(data: bytes) -> None:
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return  # not JSON (or nested past the decoder's depth): json_body's 400, the parser never sees it
    with contextlib.suppress(BadRequest):  # the documented error; anything else is a crash
        parse_batch(body)


if __name__ == "__main__":
    from tests.fuzz.common import main

    main(one_input, SEEDS)
