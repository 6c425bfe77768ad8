"""``edge-bench``: benchmark bundles on this host, model-only and on a camera stream.

::

    cli.py          the ``edge-bench`` CLI
    benchrun.py     the measurements: model-only latency, end-to-end pipeline rate
    hostinfo.py     what a benchmark ran on: CPU, GPU, runtimes, Jetson power mode
    tegrastats.py   Jetson ``tegrastats`` parsing and sampling
    plots.py        PNG plots of the results

Uses the perception path (camera, pipeline, inference); imports nothing of
the update or trust packages.
"""

__all__: list[str] = []
