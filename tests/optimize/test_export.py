"""optimize.export: real torch → ONNX export with parity on real preprocessed samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from models.bundle import Task
from models.runtime.onnxrt import OrtRuntime
from optimize.checkpoint import build_torch_model, read_checkpoint
from optimize.data import load_samples, open_split, spread_indices
from optimize.errors import ParityError
from optimize.export import check_parity, export_onnx, require_parity, simplify_onnx, torch_outputs


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    ck = read_checkpoint(trained_run)
    model = build_torch_model(ck)
    samples = load_samples(open_split(ck.dataset, "val"), 12, ck.input_spec)
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    result = export_onnx(model, ck.input_spec, path, task=ck.task, opset=17)
    return ck, model, samples, result


def test_export_is_valid_named_dynamic_and_matches_torch(exported) -> None:  # type: ignore[no-untyped-def]
    ck, model, samples, result = exported
    m = onnx.load(str(result.path))
    onnx.checker.check_model(m)
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["logits"]
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert result.dynamic_batch and m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    ref = torch_outputs(model, samples.inputs, ("logits",))
    rep = check_parity(result.path, ref, samples.inputs)
    assert rep.ok, rep.detail
    assert rep.samples == 12 and rep.max_abs["logits"] < 1e-3 and rep.cosine["logits"] > 0.9999
    out = OrtRuntime(result.path).run(samples.inputs[:5])["logits"]
    assert out.shape == (5, ck.num_classes)


def test_export_is_byte_identical_for_the_same_weights(exported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ck, model, _, result = exported
    again = export_onnx(model, ck.input_spec, tmp_path / "again.onnx", task=Task.CLASSIFICATION)
    assert again.path.read_bytes() == result.path.read_bytes()


def test_parity_failure_names_output_and_numbers(exported) -> None:  # type: ignore[no-untyped-def]
    _, model, samples, result = exported
    ref = torch_outputs(model, samples.inputs, ("logits",))
    ref["logits"] = ref["logits"] + 0.5  # what a wrong export would look like
    rep = check_parity(result.path, ref, samples.inputs)
    assert not rep.ok
    with pytest.raises(ParityError, match=r"logits: max \|onnx - torch\| 0.5"):
        require_parity(rep, "the exported ONNX model")


def test_simplified_model_keeps_parity(exported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, model, samples, result = exported
    slim = tmp_path / "slim.onnx"
    assert simplify_onnx(result.path, slim)
    assert check_parity(slim, torch_outputs(model, samples.inputs, ("logits",)), samples.inputs).ok
    assert not simplify_onnx(tmp_path / "missing.onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_spread_indices_are_deterministic_and_cover_the_split() -> None:
    assert spread_indices(10, 3) == [0, 4, 9] or spread_indices(10, 3) == [0, 5, 9]
    assert spread_indices(5, 10) == [0, 1, 2, 3, 4]
    assert spread_indices(0, 3) == []
    assert spread_indices(1000, 7) == spread_indices(1000, 7)
    assert np.all(np.diff(spread_indices(1000, 50)) > 0)
