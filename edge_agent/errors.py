"""Errors of the edge agent, and the reason codes it reports.

::

    EdgeAgentError (Exception)        base of everything the agent raises on purpose
    ├── ConfigError                   bad flags, a missing or unreadable data dir / identity
    ├── JournalError                  the journal or the agent state file cannot be read or written
    ├── ServerError                   the OTA server answered with an error; ``status`` holds the HTTP status
    │   └── ServerUnreachable         connection refused, timeout, 5xx: try again later
    ├── StopRequested                 SIGTERM/SIGINT cut a waiting step short; the journal resumes it
    └── UpdateError                   one update step failed; ``reason`` is a :class:`ReasonCode`
        ├── TransientError            worth retrying later (network, stalled transfer): back off with jitter
        └── FatalError                abandon this update, keep or restore the previous model, report

Third-party errors (urllib3, python-tuf, cryptography, ONNX Runtime) are
wrapped where they happen with ``raise ... from e``; callers see only these.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

__all__ = [
    "ReasonCode",
    "EdgeAgentError",
    "ConfigError",
    "JournalError",
    "ServerError",
    "ServerUnreachable",
    "StopRequested",
    "UpdateError",
    "TransientError",
    "FatalError",
]


class ReasonCode(str, Enum):
    """Why an update was refused, failed or rolled back (docs/contracts.md §7)."""

    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    WRONG_DEVICE = "WRONG_DEVICE"
    NONCE_MISMATCH = "NONCE_MISMATCH"
    ASSIGNMENT_EXPIRED = "ASSIGNMENT_EXPIRED"
    RELEASE_COUNTER_DECREASED = "RELEASE_COUNTER_DECREASED"
    TARGET_NOT_IN_TUF = "TARGET_NOT_IN_TUF"
    TARGET_MISMATCH = "TARGET_MISMATCH"
    TUF_METADATA_INVALID = "TUF_METADATA_INVALID"
    TUF_EXPIRED = "TUF_EXPIRED"
    TUF_ROLLBACK = "TUF_ROLLBACK"
    LENGTH_EXCEEDED = "LENGTH_EXCEEDED"
    HASH_MISMATCH = "HASH_MISMATCH"
    SLOW_RETRIEVAL = "SLOW_RETRIEVAL"
    DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
    NO_SPACE = "NO_SPACE"
    INCOMPATIBLE_HARDWARE = "INCOMPATIBLE_HARDWARE"
    BUNDLE_INVALID = "BUNDLE_INVALID"
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    RUNTIME_CRASHED = "RUNTIME_CRASHED"
    NAN_OUTPUT = "NAN_OUTPUT"
    LATENCY_OVER_BUDGET = "LATENCY_OVER_BUDGET"
    LOW_AGREEMENT = "LOW_AGREEMENT"
    HEALTH_REGRESSION = "HEALTH_REGRESSION"
    ENGINE_BUILD_FAILED = "ENGINE_BUILD_FAILED"
    MANUAL_ROLLBACK = "MANUAL_ROLLBACK"

    @classmethod
    def parse(cls, value: str | None, *, default: ReasonCode) -> ReasonCode:
        """A reason code from a perception result; unknown or missing → ``default``."""
        try:
            return cls(value) if value else default
        except ValueError:
            return default


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


class StopRequested(EdgeAgentError):
    """The agent was asked to stop during a step (shadow run, health watch).

    Not an update failure: the journal still holds the step's state, so the
    next start repeats that step.
    """


class UpdateError(EdgeAgentError):
    """An update step failed for ``reason``; ``transient`` says whether to retry."""

    transient = False

    def __init__(
        self, reason: ReasonCode, detail: str, *, claimed: dict[str, Any] | None = None
    ) -> None:
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
