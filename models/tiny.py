"""Tiny reference bundles: real ONNX classifiers with real manifests, for smoke checks and demos.

Each model is a genuine ONNX graph built with ``onnx.helper`` (no torch) that
ONNX Runtime runs, inside a genuine bundle (:mod:`models.bundle`), so the demo's
``--quick`` flow, the benchmarks and the tests exercise the agent's gates on
something that loads, runs and decodes like a trained model. Behaviours:

- ``ok``: mean colour per channel → linear classifier (deterministic logits);
- ``permuted``: same weights with the output classes rotated (disagrees with ``ok``);
- ``nan``: multiplies the logits by NaN;
- ``slow``: adds a chain of large MatMuls so each inference takes tens of ms;
- ``nan-on-red``: like ``ok``, but NaN logits on frames whose mean red exceeds 0.6
  (a model that breaks only on some scenes);
- ``no-blue``: like ``ok``, but "blue" never wins (its frames go to "other"): one class broken;
- ``not-onnx``: the "model" file is random bytes.

:func:`make_multi_bundle` writes several variants (FP32, INT8 ...) of such models in one bundle.

Needs ``onnx`` (the ``optimize`` extra); nothing else in ``models`` imports this
module. It trains nothing and optimizes nothing: the weights are fixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.bundle import (
    ColorOrder,
    DecoderKind,
    DecoderSpec,
    Format,
    Gates,
    HardwareRequirements,
    InputSpec,
    Layout,
    Manifest,
    OutputSpec,
    Precision,
    Provenance,
    ResizeMode,
    SelectionEntry,
    Task,
    TensorSpec,
    Variant,
    write_bundle,
)

__all__ = ["LABELS", "SIZE", "linear_weights", "make_bundle", "make_multi_bundle", "make_onnx"]

LABELS = ("red", "green", "blue", "other")
SIZE = 32


def linear_weights(shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's ``W`` (3×4) and ``b`` (4): ``logits = mean_rgb @ W + b``, class c firing
    for colour channel c; ``shift`` rotates the classes (the ``permuted`` behaviour)."""
    w = np.zeros((3, 4), dtype=np.float32)
    w[0, 0] = w[1, 1] = w[2, 2] = 4.0
    w[:, 3] = 1.3
    b = np.zeros(4, dtype=np.float32)
    if shift:
        w = np.roll(w, shift, axis=1)
        b = np.roll(b, shift)
    return w, b


def make_onnx(behaviour: str = "ok", *, slow_ops: int = 24, slow_dim: int = 384) -> bytes:
    """Serialized ONNX model (opset 17) for one of the behaviours above.

    A name that is none of them builds the ``ok`` model; nothing is raised for any input.
    """
    if behaviour == "not-onnx":
        return hashlib.sha256(b"not a model").digest() * 64
    w, b = linear_weights(1 if behaviour == "permuted" else 0)
    if behaviour == "no-blue":
        b[LABELS.index("blue")] = -1e4
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits0"]),
    ]
    last = "logits0"
    if behaviour == "nan":
        inits.append(numpy_helper.from_array(np.array([np.nan], dtype=np.float32), "NANV"))
        nodes.append(helper.make_node("Mul", [last, "NANV"], ["logits_nan"]))
        last = "logits_nan"
    if behaviour == "nan-on-red":
        inits += [
            numpy_helper.from_array(np.array([0], dtype=np.int64), "RED_START"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "RED_END"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "RED_AXIS"),
            numpy_helper.from_array(np.array(0.6, dtype=np.float32), "RED_LIMIT"),
            numpy_helper.from_array(np.array(np.nan, dtype=np.float32), "RED_NAN"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "RED_ZERO"),
        ]
        nodes += [
            helper.make_node("Slice", ["flat", "RED_START", "RED_END", "RED_AXIS"], ["red_mean"]),
            helper.make_node("Greater", ["red_mean", "RED_LIMIT"], ["is_red"]),
            helper.make_node("Where", ["is_red", "RED_NAN", "RED_ZERO"], ["red_nan"]),
            helper.make_node("Add", [last, "red_nan"], ["logits_red"]),
        ]
        last = "logits_red"
    if behaviour == "slow":
        rng = np.random.default_rng(0)
        m = (rng.standard_normal((slow_dim, slow_dim)) / slow_dim).astype(np.float32)
        big = np.ones((slow_dim, slow_dim), dtype=np.float32)
        inits += [numpy_helper.from_array(m, "M"), numpy_helper.from_array(big, "BIG")]
        # the chain depends on the input, so ONNX Runtime cannot constant-fold it away
        nodes.append(helper.make_node("ReduceMean", ["input"], ["input_mean"], keepdims=0))
        nodes.append(helper.make_node("Mul", ["BIG", "input_mean"], ["chain_in"]))
        nodes.append(helper.make_node("MatMul", ["chain_in", "M"], ["chain0"]))
        x = "chain0"
        for i in range(1, slow_ops):
            nodes.append(helper.make_node("MatMul", [x, "M"], [f"chain{i}"]))
            x = f"chain{i}"
        nodes.append(helper.make_node("ReduceSum", [x], ["chain_sum"], keepdims=0))
        zero = np.zeros((), dtype=np.float32)
        inits.append(numpy_helper.from_array(zero, "ZERO"))
        nodes.append(helper.make_node("Mul", ["chain_sum", "ZERO"], ["chain_zero"]))
        nodes.append(helper.make_node("Add", [last, "chain_zero"], ["logits_slow"]))
        last = "logits_slow"
    nodes.append(helper.make_node("Identity", [last], ["logits"]))
    graph = helper.make_graph(
        nodes,
        f"tiny-{behaviour}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


def make_bundle(
    directory: str | os.PathLike[str],
    *,
    name: str = "tiny",
    version: str = "1.0.0",
    behaviour: str = "ok",
    latency_budget_ms: float = 250.0,
    min_agreement: float = 0.8,
    slow_ops: int = 24,
) -> Manifest:
    """Write a one-variant classification bundle into ``directory`` and return its manifest.

    Raises :class:`~models.bundle.BundleError` if the manifest does not validate, ``OSError`` if
    ``directory`` cannot be written.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    data = make_onnx(behaviour, slow_ops=slow_ops)
    (d / "model.onnx").write_bytes(data)
    variant = Variant(
        id="onnx-fp32",
        format=Format.ONNX,
        precision=Precision.FP32,
        file="model.onnx",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        requires=HardwareRequirements(accelerators=("cpu", "cuda", "jetson")),
    )
    manifest = Manifest(
        name=name,
        version=version,
        task=Task.CLASSIFICATION,
        labels=LABELS,
        input=InputSpec(
            name="input",
            shape=(None, 3, SIZE, SIZE),
            layout=Layout.NCHW,
            color_order=ColorOrder.RGB,
            resize=ResizeMode.STRETCH,
            scale=1.0 / 255.0,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
        ),
        output=OutputSpec(
            tensors=(TensorSpec("logits", (None, len(LABELS)), "logits"),),
            decoder=DecoderSpec(kind=DecoderKind.TOPK, top_k=2),
        ),
        variants=(variant,),
        selection={
            hw: SelectionEntry(order=("onnx-fp32",), reason="only variant")
            for hw in ("cpu-x86_64", "cpu-aarch64", "cuda", "jetson-orin", "jetson-xavier", "jetson-nano")
        },
        gates=Gates(
            latency_budget_ms=latency_budget_ms, min_agreement=min_agreement, shadow_frames=20, health_window_s=3.0
        ),
        provenance=Provenance(
            training_run="tests/tiny",
            dataset_fingerprint="sha256:" + "0" * 64,
            code_version="test",
            created_at="2026-01-01T00:00:00Z",
        ),
        arch="tiny-linear",
    )
    write_bundle(d, manifest)
    return manifest


def make_multi_bundle(
    directory: str | os.PathLike[str],
    *,
    name: str = "duo",
    version: str = "1.0.0",
    variants: tuple[tuple[str, str], ...] = (("onnx-fp32", "ok"), ("onnx-int8", "ok")),
    order: tuple[str, ...] | None = None,
    latency_budget_ms: float = 250.0,
    slow_ops: int = 2,
) -> Manifest:
    """A bundle with several variants, ``(id, behaviour)`` each, every one runnable on every host.

    ``order`` is each hardware class's selection order (default: ``variants`` order), so the
    first is what the director assigns and the others its alternates. A precision is read from
    the id (``-int8``, ``-fp16``, else FP32). Each file's graph is named after its variant, so
    two variants of the same behaviour compute alike but are different files. ``slow`` here is a
    short chain (``slow_ops``) of MatMuls: several times slower than ``ok``, far within budget.
    Raises like :func:`make_bundle`.
    """
    d = Path(directory)
    base = make_bundle(d, name=name, version=version, latency_budget_ms=latency_budget_ms)
    (d / "model.onnx").unlink()
    built = []
    for vid, behaviour in variants:
        if behaviour == "not-onnx":
            data = hashlib.sha256(vid.encode()).digest() * 64
        else:
            model = onnx.load_from_string(make_onnx(behaviour, slow_ops=slow_ops, slow_dim=256))
            model.graph.name = f"tiny-{vid}"
            data = model.SerializeToString()
        file = f"model-{vid}.onnx"
        (d / file).write_bytes(data)
        precision = (
            Precision.INT8 if vid.endswith("int8") else Precision.FP16 if vid.endswith("fp16") else Precision.FP32
        )
        built.append(
            dataclasses.replace(
                base.variants[0],
                id=vid,
                precision=precision,
                file=file,
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
            )
        )
    wanted = order or tuple(vid for vid, _ in variants)
    selection = {hw: SelectionEntry(order=wanted, reason="test order") for hw in base.selection}
    manifest = dataclasses.replace(base, variants=tuple(built), selection=selection)
    write_bundle(d, manifest)
    return manifest
