"""optimize.tensorrt: the TensorRT 10 builder path, through the fake ``tensorrt`` module."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from models.bundle import Precision
from models.runtime.onnxrt import OrtRuntime
from models.runtime.tensorrt import TrtRuntime
from optimize.errors import EngineCompileError
from optimize.tensorrt import TrtBuildConfig, build_engine, tensorrt_available
from tests.bundles import make_onnx
from tests.models import fake_tensorrt, fake_tensorrt_builder


@pytest.fixture
def onnx_path(tmp_path: Path) -> Path:
    p = tmp_path / "model.onnx"
    p.write_bytes(make_onnx("ok"))
    return p


def test_strongly_typed_build_with_profile_and_timing_cache(tmp_path: Path, onnx_path: Path) -> None:
    cache = tmp_path / "timing.cache"
    cfg = TrtBuildConfig(input_shape=(3, 32, 32), max_batch=4, timing_cache=cache, workspace_mb=256)
    with fake_tensorrt.install():
        assert tensorrt_available()
        info = build_engine(onnx_path, tmp_path / "model.engine", cfg)
        b = fake_tensorrt_builder.Builder.last
        assert b is not None and b.network is not None and b.config is not None
        assert b.network.flags == 1 << int(fake_tensorrt_builder.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        assert b.config.flags == set()  # strongly typed: precisions come from the Q/DQ graph
        assert b.config.pools[fake_tensorrt_builder.MemoryPoolType.WORKSPACE] == 256 << 20
        assert b.config.profiles[0].shapes["input"] == ((1, 3, 32, 32), (1, 3, 32, 32), (4, 3, 32, 32))
        assert cache.read_bytes().startswith(b"TIMINGCACHE")
        assert info.tensorrt_version == "10.3.0" and info.compute_capability == "8.7" and info.strongly_typed
        # the engine runs in the TensorRT runtime and agrees with ONNX Runtime on the same graph
        x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
        got = TrtRuntime(info.path).run(x)["logits"]
    np.testing.assert_allclose(got, OrtRuntime(onnx_path).run(x)["logits"], rtol=1e-5, atol=1e-6)


def test_without_strong_typing_int8_and_fp16_flags_are_set(tmp_path: Path, onnx_path: Path) -> None:
    with fake_tensorrt.install() as trt:
        del trt.NetworkDefinitionCreationFlag  # an older TensorRT
        trt.NetworkDefinitionCreationFlag = type("F", (), {"EXPLICIT_BATCH": 0})
        info = build_engine(onnx_path, tmp_path / "e.engine", TrtBuildConfig((3, 32, 32), dynamic_batch=False))
        b = fake_tensorrt_builder.Builder.last
        assert b is not None and b.config is not None and b.network is not None
        assert b.network.flags == 0 and not info.strongly_typed
        assert b.config.flags == {fake_tensorrt_builder.BuilderFlag.INT8, fake_tensorrt_builder.BuilderFlag.FP16}
        assert b.config.profiles[0].shapes["input"][2] == (1, 3, 32, 32)
        build_engine(onnx_path, tmp_path / "f.engine", TrtBuildConfig((3, 32, 32), precision=Precision.FP16))
        assert fake_tensorrt_builder.Builder.last.config.flags == {fake_tensorrt_builder.BuilderFlag.FP16}  # type: ignore[union-attr]


def test_parse_and_build_failures_are_engine_build_errors(
    tmp_path: Path, onnx_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with (
        fake_tensorrt.install(),
        pytest.raises(EngineCompileError, match="TensorRT cannot parse bad.onnx: ModelImporter"),
    ):
        build_engine(bad, tmp_path / "x.engine", TrtBuildConfig((3, 32, 32)))
    with fake_tensorrt.install(fail_builds=True):  # valid ONNX the builder cannot turn into an engine
        with pytest.raises(EngineCompileError, match="TensorRT failed to build model.onnx"):
            build_engine(onnx_path, tmp_path / "x.engine", TrtBuildConfig((3, 32, 32)))
        assert not (tmp_path / "x.engine").exists()
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a host without TensorRT
    with pytest.raises(EngineCompileError, match="TensorRT is not installed"):
        build_engine(onnx_path, tmp_path / "y.engine", TrtBuildConfig((3, 32, 32)))
    assert not tensorrt_available()


@pytest.mark.tensorrt
def test_real_tensorrt_build(tmp_path: Path, onnx_path: Path) -> None:
    info = build_engine(
        onnx_path,
        tmp_path / "model.engine",
        TrtBuildConfig((3, 32, 32), precision=Precision.FP32, timing_cache=tmp_path / "t.cache"),
    )
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(
        TrtRuntime(info.path).run(x)["logits"], OrtRuntime(onnx_path).run(x)["logits"], atol=1e-3
    )
