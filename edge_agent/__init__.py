"""edgefleet's on-device agent (``edge-agent``, ``edge-bench``).

::

    trust/        what may be installed: director assignment, TUF client, verified downloads
    update/       the update path: pure state machine, controller and its steps, journal, slots, gate, daemon
    link/         the server link: HTTP client, enrollment identity, telemetry outbox
    perception/   the perception path: interface, camera pipeline, inference, shadow, swap, health, runtimes
    bench/        ``edge-bench``: model-only and pipeline benchmarks, host info, tegrastats, plots
    config.py     AgentConfig and the data-directory layout (AgentPaths)
    errors.py     the error tree (every error the agent raises on purpose) and the reason codes
    stopping.py   waits that a stop request cuts short
    __main__.py   the ``edge-agent`` CLI: enroll, run, status, rollback
    systemd/      an example unit file

Layers: trust ← update → perception ← bench; update also uses link, link uses
trust for the pinned director key. The shared modules above import no
sub-package. Importing this package (or a sub-package) pulls in no heavy
framework.
"""

__all__: list[str] = []
