"""edgefleet's on-device agent.

Update path: :mod:`edge_agent.core` (the pure state machine), :mod:`~edge_agent.trust`
and :mod:`~edge_agent.tuf_client` (director assignment + TUF verification),
:mod:`~edge_agent.download`, :mod:`~edge_agent.slots`, :mod:`~edge_agent.prepare`
(child-process model gate), :mod:`~edge_agent.runtimes` (the one way a staged variant
is opened) with :mod:`~edge_agent.engines` (on-device TensorRT builds and their cache),
:mod:`~edge_agent.telemetry`, wired by
:mod:`~edge_agent.controller` and :mod:`~edge_agent.daemon`; CLI ``edge-agent``.
Perception path: :mod:`edge_agent.perception` (the interface), the camera
pipeline and ``edge-bench``. Importing this package pulls in no heavy framework.
"""
