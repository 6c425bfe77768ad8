"""The perception path: how models serve camera frames, and how a candidate is judged and swapped in.

::

    base.py        the interface the update path drives (Perception, GateResult, GateContext, SwapResult)
    camera.py      camera sources (V4L2, file, RTSP/HTTP, GStreamer, synthetic) through OpenCV
    pipeline.py    capture → bounded queue → batched inference → sink, every frame counted
    inference.py   a loaded bundle: one frame in, one attributed Outcome out
    agreement.py   agreement of a candidate with its reference, and what to expect of it
    shadow.py      the shadow run: a candidate judged on live frames (sequential test)
    health.py      the health watch after a swap
    serving.py     CameraPerception: serve, shadow, hot swap, watch, swap back
    headless.py    HeadlessPerception: the same steps without a camera
    samples.py     synthetic sample frames (the child-process gate, the headless watch)
    runtimes.py    the one way a staged variant is opened, and which variant a slot serves
    engines.py     the on-device TensorRT engine cache

The interface of :mod:`~edge_agent.perception.base` is re-exported here.
Imports nothing of the update, trust or bench packages.
"""

from edge_agent.perception.base import (
    GateContext,
    GateResult,
    JudgedAgainst,
    Perception,
    SwapResult,
)

__all__ = ["GateResult", "SwapResult", "JudgedAgainst", "GateContext", "Perception"]
