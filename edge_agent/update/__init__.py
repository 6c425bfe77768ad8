"""The update path: decide with a pure state machine, act through the controller, survive crashes.

::

    core.py         the pure state machine (one handler per state, StepOutcome, the Controller protocol)
    controller.py   AgentController: the Controller protocol, composed of the step pieces below
    intake.py       checking: poll, verify the assignment, match its files to TUF
    files.py        downloading, verifying, staging
    gate.py         preparing: the child-process gate over a staged slot, and its verdicts
    handover.py     benchmarking, swapping, health-watch on the perception path
    endings.py      committed, rolled back, abandoned: settle, prune engines
    records.py      last_update in the state file, the reports of an update
    journal.py      crash-safe journal and agent state files
    slots.py        A/B slots and the atomic ``current`` switch
    prepare.py      the child process (``python -m edge_agent.update.prepare``) and its parent side
    daemon.py       the agent loop and its wiring (build_agent), status, manual rollback

Uses trust (what may be installed), link (the server) and perception (how
models serve); none of them imports this package.
"""

__all__: list[str] = []
