"""The ``checking`` step: poll the director, verify its assignment, match every file it names to TUF.

:class:`AssignmentIntake` keeps the poll's nonce and ETag in the agent state
file, verifies the signed assignment with :mod:`edge_agent.trust.assignment`
against the device's own nonce, id, release counter and the release it runs,
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

from edge_agent.errors import FatalError, ReasonCode, ServerError, ServerUnreachable, TransientError
from edge_agent.link.client import ServerClient
from edge_agent.link.identity import Identity
from edge_agent.perception.runtimes import variant_in
from edge_agent.trust.assignment import (
    Assignment,
    DirectorKey,
    TargetRef,
    claimed_of,
    match_target,
    verify_assignment,
)
from edge_agent.trust.tuf_client import TufClient
from edge_agent.update.core import State, StepOutcome, Update, VariantTarget
from edge_agent.update.journal import AgentState, StateFile
from edge_agent.update.records import last_update
from edge_agent.update.slots import Slots

__all__ = ["AssignmentIntake"]

log = logging.getLogger(__name__)
_R = ReasonCode
_REPOSITORY_REASONS = frozenset({_R.TUF_EXPIRED, _R.TUF_ROLLBACK, _R.TUF_METADATA_INVALID, _R.TARGET_NOT_IN_TUF})


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

        Raises TransientError when the server cannot be polled, FatalError (with the
        reason code) when the assignment or its TUF targets are refused.
        """
        st = self.state.load()
        if not st.nonce:
            st = replace(st, nonce=secrets.token_hex(16))
            self.state.save(st)
        try:
            polled = self.client.assignment(self.identity.device_id, st.nonce, etag=st.etag)
        except ServerUnreachable as e:
            raise TransientError(_R.DOWNLOAD_FAILED, f"server unreachable: {e}") from e
        except ServerError as e:
            raise TransientError(_R.DOWNLOAD_FAILED, f"assignment poll refused: {e}") from e
        if polled.envelope is None:
            return None
        try:
            return self._accept(st, polled.envelope, polled.etag)
        except FatalError as e:
            self.claimed = e.claimed or claimed_of(polled.envelope)
            refused = f"{_digest(polled.envelope)}:{e.reason.value}"
            # a repository-side refusal may heal (re-signed timestamp, late publish): re-check each poll
            etag = None if e.reason in _REPOSITORY_REASONS else polled.etag
            self.state.save(replace(self.state.load(), etag=etag, refused=refused))
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
        a = verify_assignment(
            envelope,
            key=self.director_key,
            device_id=self.identity.device_id,
            nonce=st.nonce,
            now=datetime.now(timezone.utc),
            highest_release=st.highest_release,
            running=self.running_target(st),
        )
        if a.target is None or a.manifest is None or a.release is None:
            self.state.save(replace(st, etag=etag))
            return None
        key = f"{a.release}:{a.target.sha256}"
        if key in st.settled:
            log.debug("release %s already %s; nothing to do", a.release, st.settled[key])
            self.state.save(replace(st, etag=etag))
            return None
        self._match_tuf(a)
        self.state.save(replace(st, nonce=secrets.token_hex(16), etag=None, highest_release=a.release, refused=None))
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
        )

    def _match_tuf(self, a: Assignment) -> None:
        """Every file the assignment names — manifest, primary, each alternate — must be exactly its TUF
        target (no mix-and-match) before a byte of any is downloaded; raises FatalError with the reason."""
        assert a.manifest is not None  # verify_assignment requires one beside a target
        checks: list[tuple[TargetRef, Mapping[str, str], Mapping[str, Any] | None, str | None]] = [
            (a.manifest, a.manifest_hashes, None, None)
        ]
        checks += [(t.ref, t.hashes, t.custom, t.variant) for t in a.targets()]
        found = self.tuf.lookup([ref.path for ref, *_ in checks])
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


def _digest(envelope: Any) -> str:
    return hashlib.sha256(json.dumps(envelope, sort_keys=True).encode()).hexdigest()
