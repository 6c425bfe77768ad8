"""What every stage shares: the bundle contract and the code that reads, runs and judges models.

::

    bundle.py       the bundle contract: the manifest's frozen dataclasses, canonical JSON, validation
    fsio.py         crash-safe file writes (temp file + fsync + os.replace), the project's only copy
    errors.py       ModelsError, the root of every error below, and the map of the whole tree
    archs.py        the zoo's architectures as data (names, tasks, input defaults), no torch
    zoo.py          build_model over torchvision (the only module here that imports torch)
    hardware.py     hardware profiles and classes, variant selection for a device
    preprocess.py   frame → network input, driven by the bundle's InputSpec
    agreement.py    agreement of two models' decoded outputs on one frame (optimizer and agent alike)
    stats.py        decisions from noisy measurements: speedup intervals, sequential agreement tests
    bench.py        the benchmark harness: single-stream latency, interleaved timing, the CPU that measured
    reasons.py      the reason codes a vehicle reports (agent, server and ota-ctl share the enum)
    procs.py        child processes for the demo and the benchmarks: start, wait, stop, CPU time
    tiny.py         tiny reference bundles (real ONNX, real manifests) for smoke checks and demos
    datasets/       torch-free dataset readers: synthetic signs and scenes, imagefolder, COCO
    runtime/        open a bundle variant (ONNX Runtime, TensorRT) and run frames: preprocess, run, decode

This package imports no stage (training, optimize, edge_agent, ota_server).
``bundle.py`` is standard library only; torch is imported by ``zoo.py`` alone,
``onnx`` by ``tiny.py`` alone, and ONNX Runtime, TensorRT and pycuda only
lazily, inside the functions that need them (runtime backends, hardware detection).
"""
