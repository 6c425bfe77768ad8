"""Replays the real tegrastats lines of tegrastats_samples.txt like ``tegrastats --interval MS``.

tegrastats exists only on Jetson boards; this stands in for the binary so the
sampler's real subprocess, pipe and parsing code run on any host.
"""

import sys
import time
from pathlib import Path

interval_ms = int(sys.argv[sys.argv.index("--interval") + 1]) if "--interval" in sys.argv else 1000
lines = [
    x
    for x in (Path(__file__).with_name("tegrastats_samples.txt")).read_text().splitlines()
    if x and not x.startswith("#")
]
i = 0
while True:
    print(lines[i % len(lines)], flush=True)
    i += 1
    time.sleep(interval_ms / 1000.0)
