"""Waiting that a stop request cuts short.

The daemon's SIGTERM/SIGINT handler sets one ``threading.Event``; every
step that waits for long (the shadow run, the health watch, the child-process
model check) waits through :func:`wait_either` or polls the event every
:data:`STOP_POLL_S` and then raises
:class:`edge_agent.errors.StopRequested`. This module does not install
signal handlers (``edge_agent.__main__`` does).
"""

from __future__ import annotations

import threading
import time

__all__ = ["STOP_POLL_S", "wait_either"]

STOP_POLL_S = 0.1  # seconds between looks at the stop event while waiting on something else


def wait_either(done: threading.Event, stop: threading.Event | None, timeout_s: float) -> bool:
    """Wait until ``done`` is set or ``timeout_s`` passes (True), or ``stop`` is set first (False).

    Waits in slices of :data:`STOP_POLL_S` because two events cannot be
    waited on at once; a handler that sets ``stop`` is noticed within one slice.
    """
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        if stop is not None and stop.is_set():
            return False
        left = deadline - time.monotonic()
        if left <= 0 or done.wait(min(left, STOP_POLL_S) if stop is not None else left):
            return True
