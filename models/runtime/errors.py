"""Errors raised by the model runtimes.

::

    ModelRuntimeError (ModelsError, RuntimeError)   base: anything the runtime layer refuses or fails at
    ├── ModelLoadError                          the bundle/variant cannot be opened as a model
    │   ├── BackendUnavailable                  the backend (ONNX Runtime, TensorRT, pycuda) is not
    │   │                                       installed or cannot run the variant on this host
    │   └── EngineBuildError                    TensorRT could not build an engine from the ONNX
    └── InferenceError                          a loaded model failed on an input (bad shape, runtime fault)

Third-party errors (ONNX Runtime, TensorRT, CUDA) are wrapped at the edge with
``raise ... from e`` so callers need to know only these classes. The root of
the whole ``models`` tree is :class:`models.errors.ModelsError`.
"""

from __future__ import annotations

from models.errors import ModelsError

__all__ = ["ModelRuntimeError", "ModelLoadError", "BackendUnavailable", "EngineBuildError", "InferenceError"]


class ModelRuntimeError(ModelsError, RuntimeError):
    """Base class of every runtime error."""


class ModelLoadError(ModelRuntimeError):
    """A model file or bundle cannot be loaded; the message names the file and the cause."""


class BackendUnavailable(ModelLoadError):
    """The requested backend is not installed or cannot run this variant here."""


class EngineBuildError(ModelLoadError):
    """TensorRT is missing, or parsing or building the engine from an ONNX file failed; the message says which."""


class InferenceError(ModelRuntimeError):
    """Running a loaded model failed; the message names the input and the cause."""
