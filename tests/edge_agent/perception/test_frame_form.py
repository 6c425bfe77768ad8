"""The agent serving a frame-form variant: ``LoadedModel.prepare`` only resizes, inference takes the uint8 frame."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.perception.camera import Frame
from edge_agent.perception.inference import LoadedModel, load_model
from models.bundle import InputForm, write_bundle
from optimize.frame_input import write_frame_variant
from tests.bundles import make_bundle
from tests.edge_agent.media import colour_frame


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("frame-form")
    base = make_bundle(d)
    path = write_frame_variant(d / "model.onnx", d / "model-frame.onnx", base.input)
    data = path.read_bytes()
    twin = dataclasses.replace(
        base.variants[0],
        id="onnx-fp32-frame",
        file=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        input_form=InputForm.FRAME,
    )
    write_bundle(d, dataclasses.replace(base, variants=(*base.variants, twin)))
    return d


def _frame(i: int, colour: str) -> Frame:
    return Frame(i, colour_frame(colour, i, size=(64, 48)), time.monotonic(), 0.0)


def test_prepare_gives_the_resized_uint8_frame_and_inference_matches_the_tensor_form(bundle: Path) -> None:
    tensor = load_model(bundle, variant_id="onnx-fp32", threads=1)
    frame = load_model(bundle, variant_id="onnx-fp32-frame", threads=1)
    try:
        prep = frame.prepare(colour_frame("red", 0))
        assert prep.tensor.dtype == np.uint8 and prep.tensor.shape == (32, 32, 3)
        assert prep.spec == tensor.spec.frame_spec() and prep.spec != tensor.spec
        for i, colour in enumerate(["red", "green", "blue", "red"]):
            a, b = tensor.infer(_frame(i, colour)), frame.infer(_frame(i, colour))
            assert a.ok and b.ok, (a.error, b.error)
            assert a.top_k is not None and b.top_k is not None and a.top_k[0][0] == b.top_k[0][0]
        # a frame prepared for the tensor form (after a swap) is prepared again for the frame form
        stale = dataclasses.replace(_frame(9, "green"), prepared=tensor.prepare(colour_frame("green", 9)))
        out = frame.infer(stale)
        assert out.ok and out.top_k is not None and out.top_k[0][0] == tensor.infer(stale).top_k[0][0]  # type: ignore[index]
    finally:
        tensor.close()
        frame.close()
    assert isinstance(frame, LoadedModel)
