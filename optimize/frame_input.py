"""Frame-form variants: the preprocessing of :mod:`models.preprocess` moved into the ONNX graph.

A frame-form variant takes what the camera gives after the resize — uint8 BGR
``[N, H, W, 3]`` at the input size (:meth:`models.bundle.InputSpec.frame_spec`)
— and the graph does the rest, with these nodes prepended to a tensor-form
model (FP32, INT8, Q/DQ or FP16: each keeps its own quantization)::

    frame uint8 [N, H, W, 3]
      -> Transpose(0, 3, 1, 2)            only for an NCHW spec; on uint8, a quarter of the bytes
      -> Gather(channel axis, [2, 1, 0])  only for an RGB spec: whole planes, not every third byte
      -> Cast(float32)
      -> Mul(a) -> Add(b)                 a = scale / std, b = -mean / std (models.preprocess.normalization),
                                          shaped [1, 3, 1, 1]: one constant per plane
      -> [Cast(input dtype)]              only when the model's input is not float32
      -> PREPROCESSED                     what the model's original input received

The layout change comes first because ONNX Runtime's CPU kernels are slow on an innermost
axis of 3: the same nodes in the order cast, reorder, normalise, transpose cost 1.24 ms on
a 224x224 frame against 0.064 ms in this order (one thread; numpy's preprocessing: 0.49 ms),
with bit-identical results. ONNX Runtime keeps the nodes as they are (it folds a Mul/Add
into the Conv *before* it, not after), so the saving is the kernels' own.

The float32 operations are the ones numpy does in :class:`models.preprocess.Preprocessor`
(one multiply and one add per value, with the same float32 constants), so the network
input matches the numpy one to float32 rounding. The resize, letterbox and center crop
stay outside the graph (OpenCV, or GStreamer on a Jetson): their geometry is needed to
map boxes back to the frame anyway.

The prepending is done on the *finished* tensor-form file, after quantization: the
INT8 frame variant is the INT8 tensor variant with the same calibration, scales and
excluded nodes, so it differs from it only by the float32 rounding of its input, and the
preprocessing nodes themselves stay in float (the first QuantizeLinear then sees exactly
the tensor the tensor-form model sees).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.bundle import ColorOrder, InputSpec, Layout
from models.preprocess import normalization
from optimize.errors import ExportError

__all__ = ["PREPROCESSED", "frame_id", "frame_file", "prepend_preprocessing", "write_frame_variant"]

PREPROCESSED = "edgefleet_preprocessed"  # the tensor the prepended nodes produce (the old graph input)
_PREFIX = "edgefleet_frame_"


def frame_id(variant_id: str) -> str:
    """``"onnx-int8"`` → ``"onnx-int8-frame"``: the frame-form twin's id."""
    return f"{variant_id}-frame"


def frame_file(tensor_file: str) -> str:
    """``"model-int8.onnx"`` → ``"model-int8-frame.onnx"``."""
    stem, dot, ext = tensor_file.rpartition(".")
    return f"{stem}-frame.{ext}" if dot else f"{tensor_file}-frame"


def _graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    init = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise ExportError(f"a frame-form variant needs a model with one input, this one has {[i.name for i in inputs]}")
    first: onnx.ValueInfoProto = inputs[0]
    return first


def prepend_preprocessing(model: onnx.ModelProto, spec: InputSpec) -> onnx.ModelProto:
    """A copy of ``model`` whose input ``spec.name`` is the resized uint8 BGR frame.

    Raises:
        ExportError: the model's input is not the one ``spec`` describes (name, rank, size).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    old = _graph_input(out)
    if old.name != spec.name:
        raise ExportError(f"the model's input is {old.name!r}, the input spec says {spec.name!r}")
    dims = old.type.tensor_type.shape.dim
    h, w = spec.height, spec.width
    want = (3, h, w) if spec.layout is Layout.NCHW else (h, w, 3)
    got = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    if len(got) != 4 or got[1:] != want:
        raise ExportError(f"the model's input {old.name!r} has shape {list(got)}, the input spec says [N, {want}]")
    if any(t == PREPROCESSED for n in g.node for t in (*n.input, *n.output)):
        raise ExportError(f"the model already has a tensor named {PREPROCESSED!r}: is it a frame-form variant?")
    elem_type = old.type.tensor_type.elem_type
    for node in g.node:  # every consumer of the old input now reads the prepended nodes' output
        for i, name in enumerate(node.input):
            if name == old.name:
                node.input[i] = PREPROCESSED
    for o in g.output:
        if o.name == old.name:
            raise ExportError(f"the model's input {old.name!r} is also an output")

    batch = onnx.TensorShapeProto.Dimension()
    batch.CopyFrom(dims[0])
    frame = helper.make_tensor_value_info(spec.name, TensorProto.UINT8, [None, h, w, 3])
    frame.type.tensor_type.shape.dim[0].CopyFrom(batch)

    a, b = normalization(spec)
    nchw = spec.layout is Layout.NCHW
    per_channel = (1, 3, 1, 1) if nchw else (3,)  # NCHW: one constant per plane, a vectorised broadcast
    inits = [
        numpy_helper.from_array(a.reshape(per_channel), _PREFIX + "scale"),
        numpy_helper.from_array(b.reshape(per_channel), _PREFIX + "offset"),
    ]
    nodes: list[onnx.NodeProto] = []
    x = spec.name

    def add(op: str, inputs: list[str], **attrs: object) -> None:
        nonlocal x
        name = f"{_PREFIX}{op.lower()}{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))  # type: ignore[arg-type]
        x = name

    if nchw:  # on uint8, first: a quarter of the bytes of a float transpose
        add("Transpose", [x], perm=[0, 3, 1, 2])
    if spec.color_order is ColorOrder.RGB:  # the frame is BGR, the network wants RGB
        inits.append(numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), _PREFIX + "rgb"))
        add("Gather", [x, _PREFIX + "rgb"], axis=1 if nchw else 3)
    add("Cast", [x], to=TensorProto.FLOAT)
    add("Mul", [x, _PREFIX + "scale"])
    add("Add", [x, _PREFIX + "offset"])
    if elem_type != TensorProto.FLOAT:
        add("Cast", [x], to=elem_type)
    nodes[-1].output[0] = PREPROCESSED

    kept = [n for n in g.node]
    del g.node[:]
    g.node.extend(nodes + kept)
    g.initializer.extend(inits)
    idx = list(g.input).index(old)
    g.input.remove(old)
    g.input.insert(idx, frame)
    g.value_info.append(helper.make_tensor_value_info(PREPROCESSED, elem_type, [d for d in _dims(dims)]))
    return out


def _dims(dims: object) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in dims:  # type: ignore[attr-defined]
        out.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return out


def write_frame_variant(src: Path, dst: Path, spec: InputSpec) -> Path:
    """Write the frame-form twin of the ONNX file ``src`` to ``dst`` (checked, deterministic bytes).

    Raises:
        ExportError: the model does not take the input ``spec`` describes, or the result does not check.
    """
    model = prepend_preprocessing(onnx.load(str(src)), spec)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the frame-form model built from {src.name} is not valid ONNX: {e}") from e
    dst.write_bytes(model.SerializeToString(deterministic=True))
    return dst
