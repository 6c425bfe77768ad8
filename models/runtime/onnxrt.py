"""ONNX Runtime backend: one :class:`OrtRuntime` per model file.

Chooses execution providers (TensorRT, CUDA, CPU — whichever this build of
ONNX Runtime offers, or the caller's list), thread counts and the graph
optimisation level, and wraps every ONNX Runtime error in
:mod:`models.runtime.errors`. ``onnxruntime`` is imported lazily, inside the
functions that need it, so importing this module costs nothing.

This module does not read bundles or preprocess frames (see
:mod:`models.runtime.model`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from models.runtime.errors import BackendUnavailable, InferenceError, ModelLoadError

__all__ = ["GraphOptimization", "OrtOptions", "OrtRuntime", "available_providers", "default_providers"]

log = logging.getLogger(__name__)

# preferred order when the caller names no providers
_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
}


class GraphOptimization(str, Enum):
    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


@dataclass(frozen=True)
class OrtOptions:
    """Session settings; ``None`` leaves ONNX Runtime's default."""

    providers: tuple[str, ...] | None = None  # None = best available
    intra_op_threads: int | None = None  # threads inside one operator
    inter_op_threads: int | None = 1  # sequential execution: one graph branch at a time
    graph_optimization: GraphOptimization = GraphOptimization.ALL
    trt_cache_dir: str | None = None  # TensorRT EP engine cache (when that provider is used)
    allow_spinning: bool = True  # busy-wait between ops: lowest latency, but burns a shared CPU


def available_providers() -> tuple[str, ...]:
    """Execution providers of the installed ONNX Runtime (empty when it is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return ()
    return tuple(ort.get_available_providers())


def default_providers() -> tuple[str, ...]:
    """The best available providers, fastest first, always ending with the CPU."""
    have = set(available_providers())
    return tuple(p for p in _PREFERRED if p in have) or ("CPUExecutionProvider",)


def _provider_list(options: OrtOptions) -> list[Any]:
    have = available_providers()
    wanted = options.providers or default_providers()
    missing = [p for p in wanted if p not in have]
    if missing:
        raise BackendUnavailable(f"execution providers {missing} are not available; this host has {list(have)}")
    out: list[Any] = []
    for p in wanted:
        if p == "TensorrtExecutionProvider" and options.trt_cache_dir:
            out.append((p, {"trt_engine_cache_enable": True, "trt_engine_cache_path": options.trt_cache_dir}))
        else:
            out.append(p)
    return out


def _session_options(options: OrtOptions) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    levels = {
        GraphOptimization.DISABLED: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        GraphOptimization.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        GraphOptimization.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        GraphOptimization.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so.graph_optimization_level = levels[options.graph_optimization]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if options.intra_op_threads is not None:
        so.intra_op_num_threads = int(options.intra_op_threads)
    if options.inter_op_threads is not None:
        so.inter_op_num_threads = int(options.inter_op_threads)
    if not options.allow_spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only; failures surface as exceptions
    return so


class OrtRuntime:
    """An ONNX Runtime inference session for one model file (implements ``Runtime``).

    Raises :class:`BackendUnavailable` when ONNX Runtime or a requested
    provider is missing and :class:`ModelLoadError` when the file is not a
    model ONNX Runtime can load. ``run`` is safe to call from several threads.
    """

    def __init__(self, model: str | os.PathLike[str] | bytes, options: OrtOptions | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)") from e
        self.options = options or OrtOptions()
        self.source = "<bytes>" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise ModelLoadError(f"model file {self.source} does not exist")
        providers = _provider_list(self.options)
        try:
            self._session: Any = ort.InferenceSession(
                model if isinstance(model, bytes) else str(model),
                sess_options=_session_options(self.options),
                providers=providers,
            )
        except Exception as e:  # noqa: BLE001 - ORT raises its own untyped error family
            raise ModelLoadError(f"ONNX Runtime cannot load {self.source}: {e}") from e
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{self.source} has {len(inputs)} inputs; edgefleet models take one image tensor")
        self.input_name: str = inputs[0].name
        self.input_shape: tuple[int | str | None, ...] = tuple(inputs[0].shape)
        self.input_dtype: np.dtype[Any] = _ORT_DTYPES.get(inputs[0].type, np.dtype(np.float32))
        self.output_names: tuple[str, ...] = tuple(o.name for o in self._session.get_outputs())
        self.providers: tuple[str, ...] = tuple(self._session.get_providers())
        log.debug("loaded %s with %s", self.source, self.providers)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; returns every output by name. Raises :class:`InferenceError`."""
        if self._session is None:
            raise InferenceError(f"the session for {self.source} is closed")
        if not isinstance(batch, np.ndarray):
            raise InferenceError(f"input must be a numpy array, got {type(batch).__name__}")
        if batch.ndim != len(self.input_shape):
            raise InferenceError(
                f"input {self.input_name!r} must have {len(self.input_shape)} dimensions "
                f"{list(self.input_shape)}, got shape {list(batch.shape)}"
            )
        if batch.dtype != self.input_dtype:
            raise InferenceError(f"input {self.input_name!r} must be {self.input_dtype}, got {batch.dtype}")
        try:
            outputs = self._session.run(None, {self.input_name: batch})
        except Exception as e:  # noqa: BLE001 - wrap ORT's runtime errors at the edge
            raise InferenceError(
                f"ONNX Runtime failed on {self.source} with input shape {list(batch.shape)}: {e}"
            ) from e
        return {name: np.asarray(out) for name, out in zip(self.output_names, outputs, strict=True)}

    def close(self) -> None:
        """Release the session (idempotent)."""
        self._session = None

    def __repr__(self) -> str:
        return f"OrtRuntime({self.source!r}, providers={list(self.providers)})"


def ort_options(*, providers: Sequence[str] | None = None, threads: int | None = None) -> OrtOptions:
    """Options from the public ``open_variant`` keywords."""
    return OrtOptions(
        providers=tuple(providers) if providers else None,
        intra_op_threads=threads,
    )
