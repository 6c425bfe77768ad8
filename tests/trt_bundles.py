"""Bundles for the TensorRT path: the tiny model as FP32 ONNX plus a Q/DQ INT8 ONNX built on the device.

The Q/DQ variant is what the optimizer ships for a GPU without a prebuilt
engine: explicit quantization (``QuantizeLinear``/``DequantizeLinear`` on the
input and the weights, int8, zero point 0), marked ``build_on_device``. ONNX
Runtime runs it too, so the fake TensorRT serves real outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.bundle import (
    Format,
    HardwareRequirements,
    Manifest,
    Precision,
    SelectionEntry,
    Variant,
    write_bundle,
)
from models.tiny import LABELS, SIZE, linear_weights, make_bundle

QDQ_ID = "onnx-int8-qdq"
QDQ_FILE = "model.int8.qdq.onnx"
GPU_CLASSES = ("cuda", "jetson-orin", "jetson-xavier", "jetson-nano")
JETSON_ORIN = {
    "arch": "aarch64",
    "accelerator": "jetson",
    "board": "NVIDIA Jetson AGX Orin (simulated)",
    "compute_capability": "8.7",
    "gpu_name": "Orin (nvgpu)",
}


def make_qdq_onnx(*, shift: int = 0, seed_tag: str = "") -> bytes:
    """The ``ok`` classifier with Q/DQ pairs on its input and weights (``shift`` rotates the classes).

    ``seed_tag`` names the graph, so two calls with different tags give different bytes (a new ONNX
    hash, hence a new engine) for the same function.
    """
    w, b = linear_weights(shift)
    w_scale = np.float32(np.abs(w).max() / 127.0)
    w_q = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(1.0 / 127.0, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
        numpy_helper.from_array(w_q, "W_q"),
        numpy_helper.from_array(np.array(w_scale, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
        numpy_helper.from_array(b, "B"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
        helper.make_node("GlobalAveragePool", ["x_dq"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("DequantizeLinear", ["W_q", "w_scale", "w_zp"], ["W"]),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        f"tiny-qdq{seed_tag}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_trt_bundle(
    directory: Path, *, name: str = "tiny", version: str = "1.0.0", fallback: bool = True, qdq: bytes | None = None
) -> Manifest:
    """FP32 ONNX for every class plus the Q/DQ variant first for the GPU classes.

    ``fallback``: the GPU classes' selection also lists FP32 after the Q/DQ variant, so a device whose
    engine build fails may serve FP32; without it, the Q/DQ variant is the only choice there.
    """
    manifest = make_bundle(directory, name=name, version=version)
    data = qdq if qdq is not None else make_qdq_onnx()
    (directory / QDQ_FILE).write_bytes(data)
    variant = Variant(
        QDQ_ID,
        Format.ONNX,
        Precision.INT8,
        QDQ_FILE,
        hashlib.sha256(data).hexdigest(),
        len(data),
        HardwareRequirements(accelerators=("cuda", "jetson"), build_on_device=True),
    )
    gpu_order = (QDQ_ID, "onnx-fp32") if fallback else (QDQ_ID,)
    selection = dict(manifest.selection)
    for hw in GPU_CLASSES:
        selection[hw] = SelectionEntry(order=gpu_order, reason="INT8 engine built on the device")
    manifest = dataclasses.replace(manifest, variants=(*manifest.variants, variant), selection=selection)
    write_bundle(directory, manifest)
    return manifest
