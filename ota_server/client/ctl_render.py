"""How ``ota-ctl`` prints reason codes, gate evidence and releases: what a device decided, and why.

Part of the command-line client: it imports nothing of the server, only
:mod:`models.reasons` (standard library), and makes no request. Every :class:`~models.reasons.ReasonCode` has a
one-line meaning here, so an operator reading ``NOT_ENOUGH_FRAMES`` looks at the cameras and
not at the model. The evidence shapes are those of docs/contracts.md §7 (``gate``).

Devices choose much of what is printed (names, report details, metric keys, gate evidence), so
every string goes through :func:`printable` before it reaches the terminal: control characters
(C0, DEL, C1, ESC sequences), line and paragraph separators and bidirectional overrides are
shown as ``\\x1b``-style escapes. :func:`sanitize` applies it to a whole answer, keys included,
and ``ota-ctl`` renders only sanitized answers; ``--json`` output is escaped by ``json.dumps``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from models.reasons import ReasonCode, UnknownReasonCode

__all__ = [
    "AWAITING",
    "REASON_HINTS",
    "printable",
    "sanitize",
    "agreement_line",
    "awaiting_note",
    "confusion_line",
    "gate_lines",
    "latency_line",
    "reason_hint",
    "render_device",
    "render_failures",
    "render_reasons",
    "render_release",
    "signed_cell",
    "timing_lines",
]

REASON_HINTS: Mapping[ReasonCode, str] = {
    ReasonCode.SIGNATURE_INVALID: "the director's signature on the assignment did not verify",
    ReasonCode.WRONG_DEVICE: "the assignment names another device",
    ReasonCode.NONCE_MISMATCH: "the assignment answers another poll (nonce)",
    ReasonCode.ASSIGNMENT_EXPIRED: "the assignment expired before the device acted on it",
    ReasonCode.RELEASE_COUNTER_DECREASED: "the release counter went down (a rollback must be a new release)",
    ReasonCode.TARGET_NOT_IN_TUF: "the assigned file is not a target of the image repository",
    ReasonCode.TARGET_MISMATCH: "the assignment and the TUF targets disagree on length, hashes or custom fields",
    ReasonCode.TUF_METADATA_INVALID: "the image repository's metadata did not verify",
    ReasonCode.TUF_EXPIRED: "the image repository's metadata has expired",
    ReasonCode.TUF_ROLLBACK: "the image repository's metadata version went down",
    ReasonCode.LENGTH_EXCEEDED: "the download ran past the target's length",
    ReasonCode.HASH_MISMATCH: "the downloaded bytes do not match the target's hash",
    ReasonCode.SLOW_RETRIEVAL: "the download was slower than the minimum rate",
    ReasonCode.DOWNLOAD_FAILED: "the download failed",
    ReasonCode.PROTOCOL_ERROR: "a server reply broke the device API (too large, encoded, an unsolicited 304)",
    ReasonCode.NO_SPACE: "not enough free disk space on the device",
    ReasonCode.INCOMPATIBLE_HARDWARE: "no variant of the bundle runs on the device's hardware",
    ReasonCode.BUNDLE_INVALID: "the bundle's manifest did not validate on the device",
    ReasonCode.MODEL_LOAD_FAILED: "the runtime could not load the model",
    ReasonCode.RUNTIME_CRASHED: "the runtime crashed or hung in the gate's child process",
    ReasonCode.NAN_OUTPUT: "the model produced NaN outputs",
    ReasonCode.LATENCY_OVER_BUDGET: "p95 latency over the gate's budget",
    ReasonCode.LOW_AGREEMENT: "agreement with the running model significantly below what the bundle expects",
    ReasonCode.NOT_ENOUGH_FRAMES: "the shadow run timed out before the gate could decide: check the cameras",
    ReasonCode.SOURCE_ENDED: "the camera source ended during the shadow run (a file without --loop?)",
    ReasonCode.HEALTH_REGRESSION: "errors or latency regressed in the health window after the swap",
    ReasonCode.ENGINE_BUILD_FAILED: "the TensorRT engine build on the device failed",
    ReasonCode.MANUAL_ROLLBACK: "an operator rolled the device back",
}


def printable(text: str) -> str:
    """``text`` with every character a terminal could act on escaped (``\\x1b``, ``\\x9b``,
    ``\\u202e``); ordinary text, spaces and tabs included, is returned as it is."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch in " \t":
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out)


def sanitize(value: Any) -> Any:
    """A copy of a decoded JSON answer whose strings, keys included, went through :func:`printable`."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, Mapping):
        return {sanitize(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    return value


def reason_hint(code: str | None) -> str:
    """What a reason code the server shows means (the server counts a failure without one as
    ``UNKNOWN``)."""
    if code is None:
        return "reported without a reason code"
    try:
        return REASON_HINTS[ReasonCode.parse(code)]
    except UnknownReasonCode:
        return "reported without a reason code" if code == "UNKNOWN" else "not a reason code this ota-ctl knows"


def render_reasons(reasons: Mapping[str, int]) -> list[str]:
    """``failure reasons:`` and one line per code with its count and meaning."""
    if not reasons:
        return []
    width = max(len(code) for code in reasons) + 4
    return ["failure reasons:"] + [
        f"  {f'{code} x{n}'.ljust(width)}  {reason_hint(code)}" for code, n in reasons.items()
    ]


def agreement_line(agreement: Mapping[str, Any] | None) -> str | None:
    """``refuse after 23 frames (99% confidence), agreement 41.0% vs 94.0% expected against
    signs@1.0.0``; None without evidence."""
    if not agreement:
        return None
    text = f"{agreement.get('decision', '?')} after {agreement.get('frames', '?')} frames"
    if agreement.get("confidence"):
        c = agreement["confidence"]  # 99 %, or 99.9 % for a per-class test with its share of alpha
        text += f" ({c:.0%} confidence)" if round(c, 2) == c else f" ({c:.1%} confidence)"
    if agreement.get("agreement") is not None:
        text += f", agreement {agreement['agreement']:.1%}"
        if agreement.get("agreement_ci95"):
            low, high = agreement["agreement_ci95"]
            text += f" [{low:.1%}, {high:.1%}]"
    if agreement.get("expected") is not None:
        text += f" vs {agreement['expected']:.1%} expected"
        if agreement.get("p0") is not None:
            text += f" (threshold {agreement['p0']:.1%})"
    if agreement.get("baseline"):
        text += f" against {agreement['baseline']}"
    if agreement.get("judged_against") == "own-fp32":
        text += "'s own FP32 (no expectation for the release the device runs)"
    row = next((r for r in agreement.get("classes") or [] if r.get("label") == agreement.get("decided_class")), None)
    if agreement.get("decided_by") == "class" and row is not None:
        text += (
            f"; decided by class {row['label']!r}: {row.get('agreement', 0):.1%} of its {row.get('frames')} "
            f"frames (threshold {row.get('p0', 0):.1%})"
        )
    return text


def confusion_line(agreement: Mapping[str, Any] | None) -> str | None:
    """``flipped: red -> green x7, blue -> other x3`` (the running model's class first)."""
    rows = (agreement or {}).get("confusion") or []
    if not rows:
        return None
    return "flipped: " + ", ".join(f"{r['active']} -> {r['candidate']} x{r['count']}" for r in rows)


def timing_lines(timing: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """One line per variant timed on the device: its speedup interval and whether it cleared the rule."""
    out = []
    for t in timing or []:
        s = t.get("speedup") or {}
        verdict = "preferred" if t.get("preferred") else "not preferred"
        need = f", needs >= {t['min_speedup']:g}x" if t.get("min_speedup") is not None else ""
        out.append(
            f"{t.get('candidate')} vs {t.get('baseline')}: {t.get('metric')} speedup "
            f"{s.get('point', 0):.2f}x [{s.get('low', 0):.2f}, {s.get('high', 0):.2f}] "
            f"over {t.get('queries', '?')} queries{need}: {verdict}"
        )
    return out


def latency_line(latency: Mapping[str, Any] | None) -> str | None:
    """``latency after the swap: cpu time 3.02x the shadow run's [2.91, 3.14] (limit 1.5x): regressed``."""
    if not latency:
        return None
    s = latency.get("slowdown") or {}
    verdict = "regressed" if latency.get("regressed") else "within the limit"
    return (
        f"latency after the swap: {latency.get('metric')} time {s.get('point', 0):.2f}x the shadow run's "
        f"[{s.get('low', 0):.2f}, {s.get('high', 0):.2f}] (limit {latency.get('max_ratio', 0):g}x): {verdict}"
    )


def gate_lines(gate: Mapping[str, Any] | None, *, indent: str = "  ") -> list[str]:
    """The evidence of one gate record (as the server keeps it), a line each."""
    if not gate:
        return []
    out = []
    if gate.get("variant"):
        out.append(f"variant {gate['variant']}")
    agreement = gate.get("agreement") or {}
    why = f"why this comparison: {agreement['why']}" if agreement.get("why") else None
    for line in (agreement_line(agreement), why, confusion_line(agreement)):
        if line:
            out.append(line)
    out += timing_lines(gate.get("timing"))
    latency = latency_line(gate.get("latency"))
    if latency:
        out.append(latency)
    return [indent + line for line in out]


def render_failures(failures: Sequence[Mapping[str, Any]], table: Callable[..., str]) -> list[str]:
    """The failed devices of a rollout with their agreement decision, then the classes that
    flipped on each refusal."""
    if not failures:
        return []
    rows = [dict(f, gate=agreement_line((f.get("gate") or {}).get("agreement"))) for f in failures]
    out = ["", table(rows, ["device_id", "state", "reason_code", "variant", "gate", "time"])]
    for f in failures:
        confusion = confusion_line((f.get("gate") or {}).get("agreement"))
        if confusion:
            out.append(f"{f['device_id']} {confusion}")
    return out


def render_device(d: Mapping[str, Any]) -> str:
    """``ota-ctl devices show``: identity, what it runs, its metrics and its last gate's evidence."""
    running = d.get("running") or {}
    runs = "nothing"
    if running:
        runs = f"{running.get('name')}@{running.get('version')} (release {running.get('release')}"
        runs += f", variant {running['variant']})" if running.get("variant") else ")"
    out = [
        f"device {d['id']} ({d['name']}) in group {d['group']}, hardware class {d['hardware_class']}",
        f"state {d.get('state') or '-'}, runs {runs}, last seen {d.get('last_seen') or 'never'}",
    ]
    if d.get("revoked_at"):
        out.append(f"REVOKED (decommissioned) at {d['revoked_at']}: the server refuses its token")
    metrics = {k: v for k, v in (d.get("metrics") or {}).items() if k != "time"}
    if metrics:
        out.append(
            "metrics: "
            + ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in metrics.items())
        )
    gate = d.get("gate")
    if gate:
        outcome = gate.get("state") or "-"
        if gate.get("reason_code"):
            outcome += f" {gate['reason_code']} ({reason_hint(gate['reason_code'])})"
        out.append(
            f"last gate: release {gate.get('release')}, rollout {gate.get('rollout_id') or '-'}, "
            f"{outcome}, at {gate.get('time')}"
        )
        out += gate_lines(gate)
    return "\n".join(out)


AWAITING = "no: awaiting the offline targets signature"  # a release TUF does not list yet


def signed_cell(release: Mapping[str, Any]) -> str:
    """``yes``, or why devices cannot see the release yet (a server without offline targets says nothing)."""
    return AWAITING if release.get("awaiting_signature") else "yes"


def awaiting_note(release: Mapping[str, Any]) -> str | None:
    """What an operator does about a release awaiting the offline targets signature, or None."""
    if not release.get("awaiting_signature"):
        return None
    return (
        f"release {release.get('counter')} awaits the offline TUF targets signature: devices cannot see it and "
        "rollouts of it are refused (409) until the key holder runs `ota-server targets sign` on the server"
    )


def render_release(r: Mapping[str, Any], table: Callable[..., str]) -> str:
    """``ota-ctl releases MODEL@VERSION``: the release, whether it is signed, its files."""
    rollback = f", rollback of release {r['rollback_of']}" if r.get("rollback_of") else ""
    out = [
        f"release {r['counter']}: {r['name']}@{r['version']}{rollback}",
        f"signed: {signed_cell(r)}",
        f"created {r.get('created_at')} by {r.get('created_by')}",
    ]
    note = awaiting_note(r)
    if note:
        out.append(note)
    files = [dict(f, sha256=(f.get("hashes") or {}).get("sha256", "")[:16]) for f in r.get("files") or []]
    out += ["", table(files, ["path", "kind", "variant", "length", "sha256"])]
    return "\n".join(out)
