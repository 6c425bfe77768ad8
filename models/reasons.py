"""The reason codes a vehicle reports, one enum for the agent, the server and ``ota-ctl``.

A refused, failed or rolled-back update carries exactly one of these
(docs/contracts.md §7). The agent raises and reports them, the server
validates every report against this enum (an unknown code is a 400, never a
silent default) and the rollout rules count them.

Standard library only.
"""

from __future__ import annotations

from enum import Enum

from models.errors import ModelsError

__all__ = ["ReasonCode", "UnknownReasonCode"]


class UnknownReasonCode(ModelsError, ValueError):
    """A string that is not one of :class:`ReasonCode`'s values."""


class ReasonCode(str, Enum):
    """Why an update was refused, failed or rolled back."""

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
    PROTOCOL_ERROR = "PROTOCOL_ERROR"  # a server reply the device API does not allow (size, encoding, 304)
    NO_SPACE = "NO_SPACE"
    INCOMPATIBLE_HARDWARE = "INCOMPATIBLE_HARDWARE"
    BUNDLE_INVALID = "BUNDLE_INVALID"
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    RUNTIME_CRASHED = "RUNTIME_CRASHED"
    NAN_OUTPUT = "NAN_OUTPUT"
    LATENCY_OVER_BUDGET = "LATENCY_OVER_BUDGET"
    LOW_AGREEMENT = "LOW_AGREEMENT"
    NOT_ENOUGH_FRAMES = "NOT_ENOUGH_FRAMES"  # the shadow run timed out before the gate could decide
    SOURCE_ENDED = "SOURCE_ENDED"  # the camera source ended (a file without --loop) during the shadow run
    HEALTH_REGRESSION = "HEALTH_REGRESSION"
    ENGINE_BUILD_FAILED = "ENGINE_BUILD_FAILED"
    MANUAL_ROLLBACK = "MANUAL_ROLLBACK"

    @classmethod
    def parse(cls, value: str) -> ReasonCode:
        """The code named ``value``; raises :class:`UnknownReasonCode` for anything else."""
        try:
            return cls(value)
        except ValueError:
            raise UnknownReasonCode(
                f"unknown reason code {value!r}; known: {', '.join(c.value for c in cls)}"
            ) from None
