"""Gate evidence in device reports (contract §7): type-checked, bounded, copied field by field.

A report may name the ``variant`` the device chose to serve and carry the ``gate`` object its
shadow gate measured: the sequential agreement test's evidence (decision, frames, confidence,
the expectation it was judged against and, on a refusal, the classes that flipped most; with
per-class tests, which test decided, the overall test's own figures and the worst class rows),
the variant and the interleaved timings behind that choice, and the health window's latency
regression test. Operators read it through the server,
but any one device is assumed hostile: every field is checked for type and range, every string
and list has a size limit, and only the fields named here are kept — anything else the device
sends is dropped. A field that is wrong or too large is a
:class:`~ota_server.errors.BadRequest` naming it, e.g.
``reports[3].gate.agreement.confusion[2].count``.

Pure: no I/O. The agent builds this object (:mod:`edge_agent.perception`); the definitions of
its numbers are in :mod:`models.stats`, which the server does not import (it would load numpy
into every worker for a tuple of strings).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from ota_server.errors import BadRequest

__all__ = [
    "DECIDED_BY",
    "DECISIONS",
    "JUDGED_AGAINST",
    "MAX_CLASSES",
    "MAX_CLASS_ROWS",
    "MAX_CONFUSION",
    "MAX_FRAMES",
    "MAX_LABEL",
    "MAX_QUERIES",
    "MAX_TIMING",
    "MAX_WHY",
    "METRICS",
    "VARIANT",
    "parse_gate",
    "parse_variant",
]

MAX_CONFUSION = 10  # rows of the flipped-classes table
MAX_CLASS_ROWS = 10  # rows of the per-class tests
MAX_CLASSES = 100_000  # classes a model may have (counts of classes tested and skipped)
MAX_TIMING = 8  # variants timed on the device
MAX_LABEL = 128  # characters of a class label or a release name
MAX_WHY = 500  # characters kept of the prose saying why this comparison was chosen
MAX_FRAMES = 10_000_000
MAX_QUERIES = 100_000_000
# the values of models.stats.Verdict, and "not-judged" from an agent without a camera
DECISIONS = ("accept", "refuse", "continue", "not-judged")
JUDGED_AGAINST = ("active", "own-fp32")  # the running release's model, or the bundle's own FP32
DECIDED_BY = ("overall", "class")  # which test of models.stats.ClassAgreementTest decided
METRICS = ("cpu", "wall")
VARIANT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # a bundle variant id (models.bundle)


def _fail(where: str, expected: str, value: Any) -> BadRequest:
    shown = repr(value)
    return BadRequest(f"expected {expected}, got {shown[:80] + '...' if len(shown) > 80 else shown}", field=where)


def _number(value: Any, where: str, lo: float, hi: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not lo <= value <= hi
    ):
        raise _fail(where, f"a number within [{lo:g}, {hi:g}]", value)
    return float(value)


def _integer(value: Any, where: str, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise _fail(where, f"an integer within [0, {hi}]", value)
    return value


def _text(value: Any, where: str, limit: int = MAX_LABEL) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        raise _fail(where, f"a printable string of 1-{limit} characters", value)
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, "true or false", value)
    return value


def _prose(value: Any, where: str) -> str:
    """Free text for people, like a report's ``detail``: kept up to :data:`MAX_WHY` characters."""
    if not isinstance(value, str):
        raise _fail(where, "a string", value)
    return value[:MAX_WHY]


def _choice(value: Any, where: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise _fail(where, f"one of {list(allowed)}", value)
    return str(value)


def _pattern(value: Any, where: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise _fail(where, what, value)
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, "an object", value)
    return value


def _list(value: Any, where: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f"a list of at most {limit} entries", value)
    if len(value) > limit:
        raise BadRequest(f"expected at most {limit} entries, got {len(value)}", field=where)
    return value


Field = tuple[str, Callable[[Any, str], Any], bool]  # key, check(value, where), required


def _fields(value: Any, where: str, fields: tuple[Field, ...]) -> dict[str, Any]:
    """The named fields of an object, each checked; a missing optional field or a null is left out."""
    obj = _object(value, where)
    out: dict[str, Any] = {}
    for key, check, required in fields:
        item = obj.get(key)
        if item is None:
            if required:
                raise BadRequest("is required", field=f"{where}.{key}")
            continue
        out[key] = check(item, f"{where}.{key}")
    return out


def _unit(value: Any, where: str) -> float:
    return _number(value, where, 0.0, 1.0)


def _variant(value: Any, where: str) -> str:
    return _pattern(value, where, VARIANT, f"a variant id matching {VARIANT.pattern}")


def _interval(value: Any, where: str) -> list[float]:
    bounds = [_unit(x, f"{where}[{i}]") for i, x in enumerate(_list(value, where, 2))]
    if len(bounds) != 2 or bounds[0] > bounds[1]:
        raise _fail(where, "[low, high] with low <= high", value)
    return bounds


def _confusion_row(value: Any, where: str) -> dict[str, Any]:
    return _fields(
        value,
        where,
        (
            ("active", _text, True),
            ("candidate", _text, True),
            ("count", lambda v, w: _integer(v, w, MAX_FRAMES), True),
        ),
    )


_TEST: tuple[Field, ...] = (  # one sequential test (models.stats.AgreementTest.evidence)
    ("decision", lambda v, w: _choice(v, w, DECISIONS), True),
    ("frames", lambda v, w: _integer(v, w, MAX_FRAMES), True),
    ("agreement", _unit, False),
    ("p0", _unit, False),
    ("p1", _unit, False),
    ("alpha", _unit, False),
    ("beta", _unit, False),
    ("llr", lambda v, w: _number(v, w, -1e9, 1e9), False),
    ("confidence", _unit, False),
    ("agreement_ci95", _interval, False),
)
_CLASS_ROW: tuple[Field, ...] = (("label", _text, True), *_TEST)


def _class_rows(value: Any, where: str) -> list[dict[str, Any]]:
    return [_fields(x, f"{where}[{i}]", _CLASS_ROW) for i, x in enumerate(_list(value, where, MAX_CLASS_ROWS))]


_AGREEMENT: tuple[Field, ...] = (
    *_TEST,
    ("overall", lambda v, w: _fields(v, w, _TEST), False),
    ("decided_by", lambda v, w: _choice(v, w, DECIDED_BY), False),
    ("decided_class", _text, False),
    ("classes_tested", lambda v, w: _integer(v, w, MAX_CLASSES), False),
    ("classes_skipped", lambda v, w: _integer(v, w, MAX_CLASSES), False),
    ("classes", _class_rows, False),
    ("expected", _unit, False),
    ("baseline", _text, False),  # "name@version" of what the candidate was judged against
    ("baseline_variant", _variant, False),
    ("judged_against", lambda v, w: _choice(v, w, JUDGED_AGAINST), False),
    ("why", _prose, False),
    (
        "confusion",
        lambda v, w: [_confusion_row(x, f"{w}[{i}]") for i, x in enumerate(_list(v, w, MAX_CONFUSION))],
        False,
    ),
)


def _speedup(value: Any, where: str) -> dict[str, Any]:
    out = _fields(
        value,
        where,
        (
            ("point", lambda v, w: _number(v, w, 0.0, 1e6), True),
            ("low", lambda v, w: _number(v, w, 0.0, 1e6), True),
            ("high", lambda v, w: _number(v, w, 0.0, 1e6), True),
            ("confidence", _unit, True),
        ),
    )
    if not out["low"] <= out["point"] <= out["high"]:
        raise _fail(f"{where}.low", f"low <= point <= high (point {out['point']}, high {out['high']})", out["low"])
    return out


_TIMING: tuple[Field, ...] = (
    ("candidate", lambda v, w: _text(v, w, 64), True),
    ("baseline", lambda v, w: _text(v, w, 64), True),
    ("metric", lambda v, w: _choice(v, w, METRICS), True),
    ("speedup", _speedup, True),
    ("min_speedup", lambda v, w: _number(v, w, 0.0, 1e3), False),
    ("queries", lambda v, w: _integer(v, w, MAX_QUERIES), False),
    ("preferred", _bool, False),
)


_LATENCY: tuple[Field, ...] = (  # the health window's regression test (models.stats.SlowdownVerdict)
    ("metric", lambda v, w: _choice(v, w, METRICS), True),
    ("slowdown", _speedup, True),
    ("max_ratio", lambda v, w: _number(v, w, 0.0, 1e3), False),
    ("before", lambda v, w: _integer(v, w, MAX_FRAMES), False),
    ("after", lambda v, w: _integer(v, w, MAX_FRAMES), False),
    ("regressed", _bool, False),
)


def parse_variant(value: Any, where: str) -> str | None:
    """A report's ``variant``: a bundle variant id, or None."""
    return None if value is None else _variant(value, where)


def parse_gate(value: Any, where: str) -> dict[str, Any] | None:
    """A report's ``gate`` object with only its known, checked fields; None for null.

    Raises :class:`BadRequest` naming the first field that is wrong or over its size limit.
    """
    if value is None:
        return None
    return _fields(
        value,
        where,
        (
            ("agreement", lambda v, w: _fields(v, w, _AGREEMENT), False),
            ("variant", _variant, False),
            (
                "timing",
                lambda v, w: [_fields(x, f"{w}[{i}]", _TIMING) for i, x in enumerate(_list(v, w, MAX_TIMING))],
                False,
            ),
            ("latency", lambda v, w: _fields(v, w, _LATENCY), False),
        ),
    )
