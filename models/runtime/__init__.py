"""Model runtimes: open a bundle variant and run frames (docs/contracts.md §4).

::

    rt = open_variant(bundle_dir)                 # Runtime: input_name, output_names, run(), close()
    model = Model(bundle_dir)                     # preprocess + run + decode
    pred = model.predict(frame_bgr)               # Prediction(kind, top_k|boxes|mask, raw, timings_ms)

Backends: ONNX Runtime (:mod:`models.runtime.onnxrt`) and TensorRT 10
(:mod:`models.runtime.tensorrt`; engines built on the device with
:mod:`models.runtime.trt_build`), each importing its library lazily, so this
package imports with numpy + OpenCV only. Errors: :mod:`models.runtime.errors`.
"""

from __future__ import annotations

from models.runtime.base import Backend, Runtime
from models.runtime.decode import Detections, decode_boxes, decode_mask, nms, softmax, topk
from models.runtime.errors import (
    BackendUnavailable,
    EngineBuildError,
    InferenceError,
    ModelLoadError,
    ModelRuntimeError,
)
from models.runtime.model import Model, Prediction, open_variant, resolve_variant

__all__ = [
    "Backend",
    "Runtime",
    "Model",
    "Prediction",
    "Detections",
    "open_variant",
    "resolve_variant",
    "decode_boxes",
    "decode_mask",
    "nms",
    "softmax",
    "topk",
    "ModelRuntimeError",
    "ModelLoadError",
    "BackendUnavailable",
    "EngineBuildError",
    "InferenceError",
]
