"""The ``checking`` step: poll the director, verify its assignment, match every file it names to TUF.

:class:`AssignmentIntake` keeps the poll's nonce and ETag in the agent state
file, verifies the signed assignment with :mod:`edge_agent.trust.assignment`
with the director keys the refreshed TUF metadata lists (the pinned key when
it lists none), against the device's own nonce, id, release counter and the release it runs,
requires every file the assignment names to be exactly its target in the
refreshed TUF metadata (:mod:`edge_agent.trust.tuf_client`), and turns an
accepted assignment into an :class:`~edge_agent.update.core.Update`. A refused
assignment is remembered (by digest) so it is reported once, and recorded as
the ``last_update`` that ``status`` shows.

This module downloads nothing (:mod:`edge_agent.update.files`) and decides
nothing beyond accept or refuse (:mod:`edge_agent.update.core`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from edge_agent.errors import (
    FatalError,
    ProtocolViolation,
    ReasonCode,
    ServerError,
    ServerUnreachable,
    TransientError,
)
from edge_agent.link.client import ServerClient
from edge_agent.link.identity import Identity
from edge_agent.perception.runtimes import variant_in
from edge_agent.trust.assignment import (
    DIRECTOR_TARGET,
    MAX_ALTERNATES,
    Assignment,
    DirectorKey,
    TargetRef,
    claimed_of,
    director_keys,
    match_target,
    parse_time,
    verify_assignment,
)
from edge_agent.trust.tuf_client import TufClient, TufTarget
from edge_agent.update.core import State, StepOutcome, Update, VariantTarget
from edge_agent.update.journal import AgentState, StateFile
from edge_agent.update.records import last_update
from edge_agent.update.slots import Slots
from models.device_reports import assignment_digest

__all__ = ["AssignmentIntake"]

log = logging.getLogger(__name__)
_R = ReasonCode
_REPOSITORY_REASONS = frozenset({_R.TUF_EXPIRED, _R.TUF_ROLLBACK, _R.TUF_METADATA_INVALID, _R.TARGET_NOT_IN_TUF})
# refusals whose ETag is not kept: the repository's (they may heal) and an unverified signature (verify_assignment
# checks the signature first, so every other refusal is of an assignment the director did sign)
_UNVOUCHED = _REPOSITORY_REASONS | {_R.SIGNATURE_INVALID}


class AssignmentIntake:
    """Poll, verify, match: the controller's ``check``."""

    def __init__(
        self,
        *,
        client: ServerClient,
        identity: Identity,
        tuf: TufClient,
        director_key: DirectorKey,
        slots: Slots,
        state: StateFile,
    ) -> None:
        self.client, self.identity, self.tuf, self.director_key = client, identity, tuf, director_key
        self.slots, self.state = slots, state
        self.claimed: dict[str, Any] = {}  # rollout/release the last refused assignment claimed, for its report

    def check(self) -> Update | None:
        """The accepted update, or None (nothing assigned, already settled, or refused before).

        Raises TransientError when the server cannot be polled (``PROTOCOL_ERROR`` for a reply the
        API does not allow, such as a 304 for no verified, unexpired assignment), FatalError (with
        the reason code) when the assignment or its TUF targets are refused.
        """
        st = self.state.load()
        if not st.nonce:
            st = replace(st, nonce=secrets.token_hex(16))
            self.state.save(st)
        etag = _live_etag(st, datetime.now(timezone.utc))
        try:
            polled = self.client.assignment(self.identity.device_id, st.nonce, etag=etag)
        except ProtocolViolation as e:
            raise TransientError(_R.PROTOCOL_ERROR, f"assignment poll: {e}") from e
        except ServerUnreachable as e:
            raise TransientError(_R.DOWNLOAD_FAILED, f"server unreachable: {e}") from e
        except ServerError as e:
            raise TransientError(_R.DOWNLOAD_FAILED, f"assignment poll refused: {e}") from e
        if polled.status == 304:
            # unauthenticated: it only ever confirms an assignment this agent verified and that still holds
            if etag is None:
                raise TransientError(_R.PROTOCOL_ERROR, "304 Not Modified, but no verified, unexpired assignment named")
            if polled.etag is not None and polled.etag != etag:
                raise TransientError(_R.PROTOCOL_ERROR, f"304 Not Modified for ETag {polled.etag[:80]!r}, not {etag!r}")
            return None
        try:
            return self._accept(st, polled.envelope, polled.etag)
        except FatalError as e:
            self.claimed = {**(e.claimed or claimed_of(polled.envelope)), "assignment_digest": _stable(polled.envelope)}
            # the same assignment re-signed for this poll (new nonce, issued, expires) is the same refusal
            refused = f"{self.claimed['assignment_digest'] or _digest(polled.envelope)}:{e.reason.value}"
            # a repository-side refusal may heal (re-signed timestamp, late publish): re-check each poll;
            # any other keeps its ETag while its signed expiry holds (only a verified signature vouches)
            expires = None if e.reason in _UNVOUCHED else _signed_expiry(polled.envelope)
            etag = polled.etag if expires else None
            self.state.save(replace(self.state.load(), etag=etag, etag_expires=expires, refused=refused))
            if st.refused == refused:
                log.info("same refused assignment again (%s); not reporting twice", e.reason.value)
                return None
            # nothing was installed, but `status` must still say what was refused and why
            st = self.state.load()
            last = last_update(
                st,
                release=self.claimed.get("release"),
                name=None,
                version=None,
                state=State.REFUSED,
                outcome=StepOutcome(e.reason, e.detail),
            )
            self.state.save(replace(st, last_update=last))
            raise

    def _accept(self, st: AgentState, envelope: Any, etag: str | None) -> Update | None:
        # one TUF refresh: the director keys it lists (a rotation reaches the device so), and the files
        # the envelope names, looked up before its signature is checked (a lookup trusts nothing)
        found = self.tuf.lookup([DIRECTOR_TARGET, *_named_paths(envelope)])
        director = found.get(DIRECTOR_TARGET)
        keys = director_keys(director.custom if director else None, pinned=self.director_key)
        a = verify_assignment(
            envelope,
            key=keys,
            device_id=self.identity.device_id,
            nonce=st.nonce,
            now=datetime.now(timezone.utc),
            highest_release=st.highest_release,
            running=self.running_target(st),
        )
        verified = a.expires.isoformat() if etag else None
        if a.target is None or a.manifest is None or a.release is None:
            self.state.save(replace(st, etag=etag, etag_expires=verified))
            return None
        key = f"{a.release}:{a.target.sha256}"
        if key in st.settled:
            log.debug("release %s already %s; nothing to do", a.release, st.settled[key])
            self.state.save(replace(st, etag=etag, etag_expires=verified))
            return None
        self._match_tuf(a, found)
        self.state.save(
            replace(
                st, nonce=secrets.token_hex(16), etag=None, etag_expires=None, highest_release=a.release, refused=None
            )
        )
        return Update(
            release=a.release,
            name=a.name or "",
            version=a.version or "",
            rollout_id=a.rollout_id,
            variant=a.variant or "",
            manifest=a.manifest,
            target=a.target,
            gates=dict(a.gates),
            previous_slot=self.slots.active_slot(),
            alternates=tuple(VariantTarget(t.variant, t.ref) for t in a.alternates),
            assignment_digest=_stable(envelope),
        )

    def _match_tuf(self, a: Assignment, found: Mapping[str, TufTarget | None]) -> None:
        """Every file the assignment names — manifest, primary, each alternate — must be exactly its TUF
        target (no mix-and-match) before a byte of any is downloaded; raises FatalError with the reason."""
        assert a.manifest is not None  # verify_assignment requires one beside a target
        checks: list[tuple[TargetRef, Mapping[str, str], Mapping[str, Any] | None, str | None]] = [
            (a.manifest, a.manifest_hashes, None, None)
        ]
        checks += [(t.ref, t.hashes, t.custom, t.variant) for t in a.targets()]
        missing = [ref.path for ref, *_ in checks if ref.path not in found]
        if missing:  # not named where _named_paths looks: refresh again
            found = {**found, **self.tuf.lookup(missing)}
        claimed = {"rollout_id": a.rollout_id, "release": a.release}
        for ref, hashes, custom, variant in checks:
            info = found.get(ref.path)
            if info is None:
                raise FatalError(
                    _R.TARGET_NOT_IN_TUF, f"{ref.path} is not a target of the image repository", claimed=claimed
                )
            try:
                match_target(
                    ref,
                    hashes,
                    tuf_length=info.length,
                    tuf_hashes=info.hashes,
                    tuf_custom=info.custom,
                    custom=custom,
                    release=a,
                    variant=variant,
                )
            except FatalError as e:
                raise FatalError(e.reason, e.detail, claimed=claimed) from e

    def running_target(self, st: AgentState) -> tuple[int, str] | None:
        """(release, sha256 of the file it serves) of the active slot, or None when that is unknown."""
        slot = self.slots.active_slot()
        release = ((st.last_update or {}).get("slots") or {}).get(slot) if slot else None
        variant = variant_in(self.slots.path(slot)) if slot else None
        manifest = self.slots.manifest(slot)
        if release is None or variant is None or manifest is None:
            return None
        return int(release), manifest.variant(variant).sha256  # the file it serves, whichever variant won


def _named_paths(envelope: Any) -> list[str]:
    """The target paths an (unverified) envelope names: manifest, target, alternates (bounded)."""
    signed = envelope.get("signed") if isinstance(envelope, Mapping) else None
    if not isinstance(signed, Mapping):
        return []
    refs = [signed.get("manifest"), signed.get("target")]
    alternates = signed.get("alternates")
    if isinstance(alternates, list):
        refs += [a.get("target") for a in alternates[:MAX_ALTERNATES] if isinstance(a, Mapping)]
    paths = [r.get("path") for r in refs if isinstance(r, Mapping)]
    return [p for p in paths if isinstance(p, str) and 0 < len(p) <= 1024]


def _stable(envelope: Any) -> str | None:
    """The assignment's digest as reports name it (models.device_reports), None when malformed."""
    signed = envelope.get("signed") if isinstance(envelope, Mapping) else None
    if not isinstance(signed, Mapping):
        return None
    try:
        return assignment_digest(signed)
    except ValueError:  # not signable (a lone surrogate): no director signed it
        return None


def _live_etag(st: AgentState, now: datetime) -> str | None:
    """The ETag to name in the poll: that of a verified assignment still unexpired, else None."""
    if not st.etag or not st.etag_expires:
        return None
    try:
        expires = datetime.fromisoformat(st.etag_expires)
    except ValueError:
        return None
    return st.etag if expires.tzinfo is not None and expires > now else None


def _signed_expiry(envelope: Any) -> str | None:
    """``signed.expires`` of an envelope whose signature verified, as ISO-8601; None when unreadable."""
    signed = envelope.get("signed") if isinstance(envelope, Mapping) else None
    try:
        return parse_time(signed.get("expires"), where="expires").isoformat() if isinstance(signed, Mapping) else None
    except FatalError:
        return None


def _digest(envelope: Any) -> str:
    return hashlib.sha256(json.dumps(envelope, sort_keys=True).encode()).hexdigest()
