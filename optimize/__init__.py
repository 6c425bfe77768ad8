"""The optimizer: a training checkpoint in, a deployable bundle out (``edge-optimize``).

::

    checkpoint.py   read checkpoint + sidecar, rebuild the torch model (models.zoo)
    data.py         held-out / calibration images through models.datasets + models.preprocess; --calib-data frames
    export.py       torch → ONNX, checks, onnxslim, parity against torch
    quantize.py     INT8 (QDQ, CPU and TensorRT flavours, calibration search, node exclusion), FP16
    tensorrt.py     TensorRT 10 engine builds (explicit quantization, profiles, timing cache)
    engines.py      engines for this host's GPU class when TensorRT is installed
    evaluate.py     top-1 / mAP@0.5 / pixel agreement through the bundle decoders
    variants.py     measuring variants on this host: accuracy, decoded frames, latency timed interleaved
    select.py       pure selection rules (the speedup interval rule) and default gates
    baseline.py     --baseline bundles: compatibility checks, the variants they serve, their decoded frames
    fetch.py        --baseline-release: a published release fetched and verified through TUF (ngclient)
    expect.py       pure agreement expectations of each variant against each baseline variant
    report.py       report.md / report.json
    pipeline.py     the whole run, staged beside --out and renamed into place
    __main__.py     the CLI

Errors: :mod:`optimize.errors`. This package imports ``models`` only, never
another stage.
"""
