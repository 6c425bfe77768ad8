"""Agent configuration and the layout of its data directory.

``AgentConfig`` is built once by the CLI from flags and passed down; nothing
here reads flags or performs I/O beyond :meth:`AgentConfig.pause_from_env`,
which reads the documented test hook ``EDGEFLEET_AGENT_PAUSE_AT``.

Data directory (``--data-dir``)::

    identity.json          device id, token, server URLs (0600)
    trust/root.json        image root pinned at enrollment (TUF trust anchor)
    trust/director.pub.json director public key pinned at enrollment
    tuf/                   python-tuf metadata cache
    downloads/             <sha256>.part resumable downloads
    slots/a, slots/b       complete, verified bundles; ``current`` → slots/<x>
    journal.json           the update in progress (atomic writes)
    agent-state.json       nonce, ETag, highest release accepted, settled releases
    outbox.sqlite          telemetry reports not yet acknowledged by the server
    engines/               TensorRT engines built on the device (cache)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.errors import ConfigError

__all__ = ["AgentPaths", "AgentConfig", "PauseHook", "PAUSE_ENV"]

PAUSE_ENV = "EDGEFLEET_AGENT_PAUSE_AT"


@dataclass(frozen=True)
class AgentPaths:
    root: Path

    @property
    def identity(self) -> Path:
        return self.root / "identity.json"

    @property
    def trust_dir(self) -> Path:
        return self.root / "trust"

    @property
    def pinned_root(self) -> Path:
        return self.trust_dir / "root.json"

    @property
    def director_key(self) -> Path:
        return self.trust_dir / "director.pub.json"

    @property
    def tuf_dir(self) -> Path:
        return self.root / "tuf"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def slots(self) -> Path:
        return self.root / "slots"

    @property
    def engines(self) -> Path:
        return self.root / "engines"

    @property
    def journal(self) -> Path:
        return self.root / "journal.json"

    @property
    def state(self) -> Path:
        return self.root / "agent-state.json"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox.sqlite"

    @property
    def pause_marker_dir(self) -> Path:
        return self.root / "paused"


@dataclass(frozen=True)
class PauseHook:
    """Test hook: stop (sleep until killed) at a state, or after N downloaded bytes.

    ``EDGEFLEET_AGENT_PAUSE_AT=preparing`` pauses right after the journal
    records ``preparing``; ``EDGEFLEET_AGENT_PAUSE_AT=download:4096`` pauses
    once 4096 bytes of a target are durably in its ``.part`` file. The agent
    then writes ``<data-dir>/paused/<point>`` so a test knows where it stands.
    """

    state: str | None = None
    download_bytes: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> PauseHook:
        if not text:
            return cls()
        if text.startswith("download:"):
            try:
                return cls(download_bytes=int(text.split(":", 1)[1]))
            except ValueError:
                raise ConfigError(f"{PAUSE_ENV}=download:<bytes> needs an integer, got {text!r}") from None
        return cls(state=text)


@dataclass(frozen=True)
class AgentConfig:
    data_dir: Path
    poll_interval_s: float = 30.0  # seconds between assignment polls
    poll_jitter: float = 0.2  # +-20 % jitter on every wait
    backoff_base_s: float = 2.0  # first retry delay after a transient error
    backoff_max_s: float = 300.0  # cap of the exponential back-off
    max_attempts: int = 5  # transient failures of one update before it is abandoned
    http_timeout_s: float = 10.0  # connect/read timeout of one request
    chunk_bytes: int = 64 * 1024  # download read size
    min_rate_bps: float = 1024.0  # a transfer slower than this over the window is aborted
    rate_window_s: float = 5.0  # watchdog window (seconds)
    free_space_margin_bytes: int = 16 * 1024 * 1024  # kept free beyond the target
    prepare_timeout_s: float = 120.0  # wall limit of the child-process load check
    prepare_cpu_limit_s: int = 60  # RLIMIT_CPU of the child (seconds of CPU time)
    prepare_memory_limit_mb: int = 4096  # RLIMIT_AS of the child
    sample_frames: int = 8  # frames for the NaN check
    bench_queries: int = 20  # latency measurement queries in the child
    bench_duration_s: float = 1.0  # minimum measurement time in the child
    shadow_timeout_s: float = 120.0  # perception.shadow() limit
    engine_opt_batch: int = 1  # TensorRT profile: the batch engines are tuned for (frames per inference)
    engine_max_batch: int = 8  # ... and the largest they accept (one frame of each camera)
    engine_workspace_mb: int = 1024  # TensorRT builder scratch memory
    health_window_s: float | None = None  # override of the gates' health window
    report_batch: int = 500  # reports per POST (server limit)
    heartbeat_every_s: float = 300.0
    pause: PauseHook = field(default_factory=PauseHook)

    @property
    def paths(self) -> AgentPaths:
        return AgentPaths(self.data_dir)

    def validate(self) -> AgentConfig:
        checks = {
            "poll_interval_s": self.poll_interval_s > 0,
            "backoff_base_s": self.backoff_base_s > 0,
            "max_attempts": self.max_attempts >= 1,
            "chunk_bytes": self.chunk_bytes > 0,
            "min_rate_bps": self.min_rate_bps >= 0,
            "prepare_timeout_s": self.prepare_timeout_s > 0,
            "engine_workspace_mb": self.engine_workspace_mb > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid settings: {', '.join(bad)} must be positive")
        if not 1 <= self.engine_opt_batch <= self.engine_max_batch:
            raise ConfigError(
                f"engine batch sizes must satisfy 1 <= opt <= max, got opt {self.engine_opt_batch} "
                f"and max {self.engine_max_batch}"
            )
        return self

    @staticmethod
    def pause_from_env() -> PauseHook:
        return PauseHook.parse(os.environ.get(PAUSE_ENV))
