"""The on-device engine cache and ``open_staged``: build, cache, load, rebuild, fall back — TensorRT as the fake.

The fake (tests/models/fake_tensorrt.py) implements the TensorRT 10 API and
runs the ONNX it "compiled" with ONNX Runtime, so the engine's outputs are
compared with ONNX Runtime on the same Q/DQ graph.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import AgentConfig
from edge_agent.errors import ConfigError
from edge_agent.perception.engines import EngineKey, engine_cache_path, ensure_engine, prune_engines
from edge_agent.perception.runtimes import EngineOptions, fallbacks, open_staged, staged_variants
from models.bundle import InputSpec, Precision, read_bundle, write_bundle
from models.hardware import HardwareProfile, detect_profile
from models.runtime import Backend, Model
from models.runtime.errors import EngineBuildError, ModelLoadError
from models.runtime.trt_build import BatchProfile
from tests.models import fake_tensorrt, fake_tensorrt_builder
from tests.trt_bundles import JETSON_ORIN, QDQ_ID, make_qdq_onnx, make_trt_bundle

ORIN = HardwareProfile.from_dict({**JETSON_ORIN, "tensorrt_version": "10.3.0"})
CPU = HardwareProfile(arch="x86_64")


def _frames() -> list[np.ndarray]:
    frames = []
    for channel in (2, 1, 0, 0):  # BGR: red, green, blue, blue
        f = np.full((24, 40, 3), 30, np.uint8)
        f[..., channel] = 230
        frames.append(f)
    return frames


@pytest.fixture
def slot(tmp_path: Path) -> Path:
    make_trt_bundle(tmp_path / "slot")
    return tmp_path / "slot"


def test_cache_key_names_onnx_tensorrt_gpu_precision_and_profile(tmp_path: Path) -> None:
    key = EngineKey("f" * 64, "10.3.0", "Orin (nvgpu)", "8.7", Precision.INT8, BatchProfile(1, 2, 8))
    assert key.filename() == "f" * 64 + "-trt10.3.0-Orin_nvgpu-sm87-int8-b1-2-8.engine"
    others = [
        dataclasses.replace(key, onnx_sha256="e" * 64),
        dataclasses.replace(key, tensorrt_version="10.4.0"),
        dataclasses.replace(key, gpu_name="Xavier"),
        dataclasses.replace(key, compute_capability="7.2"),
        dataclasses.replace(key, precision=Precision.FP16),
        dataclasses.replace(key, batch=BatchProfile(1, 1, 8)),
    ]
    paths = {engine_cache_path(tmp_path, k) for k in (key, *others)}
    assert len(paths) == 7 and all(p.parent == tmp_path for p in paths)


def test_qdq_variant_is_built_with_int8_and_the_batch_profile_and_serves_like_onnx_runtime(
    tmp_path: Path, slot: Path
) -> None:
    engines = tmp_path / "engines"
    opts = EngineOptions(BatchProfile(1, 2, 4), workspace_mb=256)
    with fake_tensorrt.install():
        model = open_staged(slot, QDQ_ID, engines_dir=engines, profile=ORIN, threads=1, engine=opts)
        b = fake_tensorrt_builder.Builder.last
        assert b is not None and b.network is not None and b.config is not None
        assert b.network.flags == 0  # create_network(0): explicit batch, weakly typed
        assert b.config.flags == {fake_tensorrt_builder.BuilderFlag.INT8, fake_tensorrt_builder.BuilderFlag.FP16}
        assert b.config.pools[fake_tensorrt_builder.MemoryPoolType.WORKSPACE] == 256 << 20
        assert b.config.profiles[0].shapes["input"] == ((1, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32))
        assert model.backend is Backend.TENSORRT and model.engine_path is not None
        assert (
            model.engine_path.parent == engines and "-trt10.3.0-Orin_nvgpu-sm87-int8-b1-2-4" in model.engine_path.name
        )
        served = model.predict_batch(_frames())
        model.close()
    with Model(slot, QDQ_ID, threads=1) as reference:  # ONNX Runtime on the very same Q/DQ graph
        expected = reference.predict_batch(_frames())
    for got, want in zip(served, expected, strict=True):
        np.testing.assert_allclose(got.raw["logits"], want.raw["logits"], rtol=1e-6)
    assert [p.top1 for p in served] == [0, 1, 2, 2]


def test_second_open_hits_the_cache_and_a_new_tensorrt_version_rebuilds(tmp_path: Path, slot: Path) -> None:
    engines = tmp_path / "engines"
    with fake_tensorrt.install("10.3.0"):
        open_staged(slot, QDQ_ID, engines_dir=engines, profile=ORIN).close()
        open_staged(slot, QDQ_ID, engines_dir=engines, profile=ORIN).close()
        assert len(fake_tensorrt.STATE.builds) == 1 and len(fake_tensorrt.STATE.loads) == 2
    first = sorted(engines.iterdir())
    with fake_tensorrt.install("10.4.0"):  # a JetPack upgrade: the old plan would not deserialize
        model = open_staged(slot, QDQ_ID, engines_dir=engines, profile=ORIN)
        assert [b["tensorrt_version"] for b in fake_tensorrt.STATE.builds] == ["10.4.0"]
        assert model.engine_path is not None and "-trt10.4.0-" in model.engine_path.name
        model.close()
    assert len(sorted(engines.iterdir())) == 2 and first[0].exists()
    with fake_tensorrt.install("10.3.0", gpu_name="Xavier", compute_capability=(7, 2)):  # another GPU
        open_staged(slot, QDQ_ID, engines_dir=engines, profile=ORIN).close()
        assert len(fake_tensorrt.STATE.builds) == 1
    assert len(list(engines.iterdir())) == 3


def test_a_cached_engine_that_no_longer_loads_is_rebuilt_once(tmp_path: Path, slot: Path) -> None:
    engines = tmp_path / "engines"
    manifest = read_bundle(slot)
    with fake_tensorrt.install():
        path, built = ensure_engine(slot, manifest, manifest.variant(QDQ_ID), cache_dir=engines, batch=BatchProfile())
        assert built
        path.write_bytes(b"truncated by a power cut on another file system")
        model = open_staged(slot, QDQ_ID, engines_dir=engines, profile=ORIN)
        assert model.engine_path == path and len(fake_tensorrt.STATE.builds) == 2
        model.close()


def test_a_failed_build_is_an_engine_build_error_and_falls_back_only_as_the_selection_allows(
    tmp_path: Path, slot: Path
) -> None:
    engines = tmp_path / "engines"
    with fake_tensorrt.install(fail_builds=True), pytest.raises(EngineBuildError) as info:
        open_staged(slot, QDQ_ID, engines_dir=engines, profile=ORIN)
    assert "TensorRT failed to build model.int8.qdq.onnx: Error Code 10" in str(info.value)
    assert not engines.exists() or not list(engines.iterdir())
    assert staged_variants(slot, ORIN) == (QDQ_ID, "onnx-fp32")
    assert fallbacks(slot, [QDQ_ID], ORIN) == ("onnx-fp32",)
    make_trt_bundle(tmp_path / "strict", fallback=False)  # the selection offers the Q/DQ engine only
    assert staged_variants(tmp_path / "strict", ORIN) == (QDQ_ID,)
    assert fallbacks(tmp_path / "strict", [QDQ_ID], ORIN) == ()
    (slot / "model.onnx").unlink()  # an FP32 the director did not send is no fallback
    assert fallbacks(slot, [QDQ_ID], ORIN) == ()


def test_without_tensorrt_or_a_gpu_the_build_fails_clearly(
    tmp_path: Path, slot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fake_tensorrt.install():
        sys.modules["pycuda.driver"] = None  # type: ignore[assignment]  # TensorRT without pycuda (install() restores)
        with pytest.raises(EngineBuildError, match="no usable GPU"):
            open_staged(slot, QDQ_ID, engines_dir=tmp_path / "e", profile=ORIN)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # a device whose profile claims TensorRT it lacks
    with pytest.raises(EngineBuildError, match="has no TensorRT installed"):
        open_staged(slot, QDQ_ID, engines_dir=tmp_path / "e", profile=ORIN)


def test_onnx_variants_open_with_onnx_runtime_and_refusals_are_load_errors(tmp_path: Path, slot: Path) -> None:
    with fake_tensorrt.install():
        model = open_staged(slot, "onnx-fp32", engines_dir=tmp_path / "e", profile=ORIN, threads=1)
        assert model.backend is Backend.ONNXRUNTIME and model.engine_path is None
        model.close()
    assert staged_variants(slot, CPU) == ("onnx-fp32",)
    assert open_staged(slot, None, engines_dir=tmp_path / "e", profile=CPU).variant.id == "onnx-fp32"
    with pytest.raises(ModelLoadError, match="onnx-int8-qdq cannot run here: needs accelerator"):
        open_staged(slot, QDQ_ID, engines_dir=tmp_path / "e", profile=CPU)
    with pytest.raises(ModelLoadError, match="no variant 'onnx-fp16'"):
        open_staged(slot, "onnx-fp16", engines_dir=tmp_path / "e", profile=ORIN)
    data = bytearray((slot / "model.int8.qdq.onnx").read_bytes())
    data[-1] ^= 0xFF
    (slot / "model.int8.qdq.onnx").write_bytes(bytes(data))
    with fake_tensorrt.install(), pytest.raises(ModelLoadError, match="refusing to build model.int8.qdq.onnx"):
        open_staged(slot, QDQ_ID, engines_dir=tmp_path / "e", profile=ORIN)
    assert not fake_tensorrt.STATE.builds  # TensorRT never parsed the tampered bytes


def test_fp16_and_fixed_batch_variants_get_their_own_flags_and_profile(tmp_path: Path, slot: Path) -> None:
    manifest = read_bundle(slot)
    (slot / "model.fp16.onnx").write_bytes((slot / "model.onnx").read_bytes())  # the fake compiles any ONNX
    fp16 = dataclasses.replace(
        manifest.variant("onnx-fp32"),
        id="onnx-fp16",
        precision=Precision.FP16,
        file="model.fp16.onnx",
        requires=manifest.variant(QDQ_ID).requires,
    )
    fixed = dataclasses.replace(
        manifest,
        input=InputSpec(**{**manifest.input.__dict__, "shape": (2, 3, 32, 32)}),
        variants=(*manifest.variants, fp16),
    )
    write_bundle(slot, fixed)
    with fake_tensorrt.install():
        path, _ = ensure_engine(slot, fixed, fp16, cache_dir=tmp_path / "e", batch=BatchProfile(1, 1, 8))
        b = fake_tensorrt_builder.Builder.last
        assert b is not None and b.config is not None
        assert b.config.flags == {fake_tensorrt_builder.BuilderFlag.FP16}
        assert b.config.profiles[0].shapes["input"] == ((2, 3, 32, 32),) * 3  # a fixed batch is the whole profile
    assert path.name.endswith("-fp16-b2-2-2.engine")


def test_prune_keeps_the_engines_of_onnx_files_still_in_a_slot(tmp_path: Path) -> None:
    engines = tmp_path / "engines"
    engines.mkdir()
    keep, drop = engines / f"{'a' * 64}-trt10.3.0-x-sm87-int8-b1-1-8.engine", engines / f"{'b' * 64}-trt10.3.0.engine"
    keep.write_bytes(b"1")
    drop.write_bytes(b"2")
    assert prune_engines(engines, {"a" * 64}) == [drop] and keep.exists() and not drop.exists()
    assert prune_engines(tmp_path / "missing", set()) == []


def test_engine_options_come_from_the_agent_config_and_round_trip(tmp_path: Path) -> None:
    opts = EngineOptions.of(AgentConfig(tmp_path, engine_opt_batch=2, engine_max_batch=4, engine_workspace_mb=64))
    assert opts == EngineOptions(BatchProfile(1, 2, 4), 64)
    assert EngineOptions.from_dict(opts.to_dict()) == opts
    with pytest.raises(ValueError, match="engine options must be"):
        EngineOptions.from_dict({"batch": [1, 2]})
    with pytest.raises(ValueError, match="min <= opt <= max"):
        EngineOptions.from_dict({"batch": [1, 9, 8]})
    with pytest.raises(ConfigError, match="1 <= opt <= max, got opt 9 and max 8"):
        AgentConfig(tmp_path, engine_opt_batch=9).validate()


def test_two_onnx_files_give_two_engines(tmp_path: Path) -> None:
    make_trt_bundle(tmp_path / "v1", version="1.0.0")
    make_trt_bundle(tmp_path / "v2", version="2.0.0", qdq=make_qdq_onnx(seed_tag="-v2"))
    engines = tmp_path / "engines"
    with fake_tensorrt.install():
        for d in ("v1", "v2", "v1"):
            open_staged(tmp_path / d, QDQ_ID, engines_dir=engines, profile=ORIN).close()
        assert len(fake_tensorrt.STATE.builds) == 2
    assert len(list(engines.iterdir())) == 2


@pytest.mark.tensorrt
def test_open_staged_on_real_tensorrt(tmp_path: Path, slot: Path) -> None:
    """On a host with TensorRT and a GPU: the Q/DQ variant is built into a real engine, cached and served."""
    profile = dataclasses.replace(detect_profile(), accelerator="cuda")
    engines = tmp_path / "engines"
    model = open_staged(slot, QDQ_ID, engines_dir=engines, profile=profile)
    assert model.backend is Backend.TENSORRT
    assert [p.top1 for p in model.predict_batch(_frames())] == [0, 1, 2, 2]
    model.close()
    again = open_staged(slot, QDQ_ID, engines_dir=engines, profile=profile)
    assert again.engine_path == model.engine_path and len(list(engines.iterdir())) == 1
    again.close()
