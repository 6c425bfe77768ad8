"""Errors of the edge agent, and the reason codes it reports.

Every error the agent raises on purpose; those defined beside the code that
raises them name their module (under ``edge_agent/``), the rest are defined here::

    EdgeAgentError (Exception)        base of everything the agent raises on purpose
    ├── ConfigError                   bad flags, a missing or unreadable data dir / identity
    │   └── BatchError                perception/pipeline.py: a --max-batch the model cannot take
    ├── JournalError                  the journal or the agent state file cannot be read or written
    ├── ServerError                   the OTA server answered with an error; ``status`` holds the HTTP status
    │   ├── ServerUnreachable         connection refused, timeout, 5xx, the request's deadline: try again later
    │   ├── ProtocolViolation         a reply the protocol does not allow (too large, a content encoding,
    │   │                             an unsolicited 304): ``PROTOCOL_ERROR``, try again later
    │   └── RateLimited               429: over the report quota; ``retry_after_s`` says when to send again
    ├── StopRequested                 SIGTERM/SIGINT cut a waiting step short; the journal resumes it
    ├── UpdateError                   one update step failed; ``reason`` is a :class:`ReasonCode`
    │   ├── TransientError            worth retrying later (network, stalled transfer): back off with jitter
    │   └── FatalError                abandon this update, keep or restore the previous model, report
    ├── CameraError                   perception/camera.py: a camera source cannot be opened or reopened
    ├── ModelLoadFailed               perception/inference.py: a bundle cannot be loaded or warmed up to serve;
    │                                 ``reason`` is MODEL_LOAD_FAILED or ENGINE_BUILD_FAILED
    ├── PerceptionError               perception/serving.py: the camera perception used out of order
    └── BenchError                    bench/benchrun.py: a benchmark input (path, bundle, source) is unusable

Third-party errors (urllib3, python-tuf, cryptography, ONNX Runtime) are
wrapped where they happen with ``raise ... from e``; callers see only these.
"""

from __future__ import annotations

from typing import Any

from models.reasons import ReasonCode

__all__ = [
    "ReasonCode",
    "EdgeAgentError",
    "ConfigError",
    "JournalError",
    "ServerError",
    "ServerUnreachable",
    "ProtocolViolation",
    "RateLimited",
    "StopRequested",
    "UpdateError",
    "TransientError",
    "FatalError",
]


class EdgeAgentError(Exception):
    """Base class of every error the agent raises on purpose."""


class ConfigError(EdgeAgentError):
    """A flag, the data directory or the stored identity is missing or invalid."""


class JournalError(EdgeAgentError):
    """The journal or agent state file cannot be read or written."""


class ServerError(EdgeAgentError):
    """The server answered with an error status (``status``), e.g. 401 or 403."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class ServerUnreachable(ServerError):
    """The server could not be reached or answered 5xx; retry later."""


class ProtocolViolation(ServerError):
    """The server's reply breaks the device API's rules: larger than the endpoint's cap, in a
    content encoding the agent did not ask for, a 304 for nothing the agent holds verified."""


class RateLimited(ServerError):
    """The server answered 429: this device is over its report quota; ``retry_after_s`` is how
    long it asked the device to wait (its ``Retry-After``)."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, status=429)
        self.retry_after_s = retry_after_s


class StopRequested(EdgeAgentError):
    """The agent was asked to stop during a step (shadow run, health watch).

    Not an update failure: the journal still holds the step's state, so the
    next start repeats that step.
    """


class UpdateError(EdgeAgentError):
    """An update step failed for ``reason``; ``transient`` says whether to retry."""

    transient = False

    def __init__(self, reason: ReasonCode, detail: str, *, claimed: dict[str, Any] | None = None) -> None:
        self.reason = reason
        self.detail = detail
        # rollout/release the (possibly untrusted) assignment claimed, for the refusal report
        self.claimed = claimed or {}
        super().__init__(f"{reason.value}: {detail}")


class TransientError(UpdateError):
    """Worth retrying later: the network, a stalled or trickling transfer, a busy server."""

    transient = True


class FatalError(UpdateError):
    """Abandon this update: trust, integrity or model-quality refusal."""
