"""Errors raised by the optimizer, and what else a run can end with.

::

    OptimizeError (Exception)         base: the bundle could not be produced; nothing was written to --out
    ├── InputError                    bad input: missing/non-checkpoint file, sidecar not matching the
    │                                 arch, non-semver version, unknown target, bad option value
    ├── ExportError                   torch → ONNX failed, or the ONNX model is invalid
    │   └── ParityError               ONNX Runtime disagrees with torch beyond the tolerance
    ├── QuantizationError             calibration or INT8 quantization failed, or no INT8 variant
    │                                 stayed within the accuracy limit
    └── EngineCompileError            TensorRT could not build (or is not installed for) an engine
                                      on this host (the device-side build raises
                                      :class:`models.runtime.errors.EngineBuildError`)

    from models (models.errors.ModelsError), raised through unwrapped:
    └── BundleError (ValueError)      models.bundle: a manifest breaks the contract (the bundle this run writes)

Every other error of ``models`` is wrapped where it surfaces: ``DatasetError``,
``ZooError`` and a ``BundleError`` read from a sidecar, a ``--baseline`` or a
version become ``InputError``; a ``ModelRuntimeError`` becomes
``QuantizationError``, or marks a variant as not measured. No other module of
this package defines an error. Each message says what was expected and what
came. The CLI maps ``InputError`` to exit code 2 and every other
``OptimizeError`` (and ``BundleError``) to 1.
"""

from __future__ import annotations

__all__ = ["OptimizeError", "InputError", "ExportError", "ParityError", "QuantizationError", "EngineCompileError"]


class OptimizeError(Exception):
    """The optimizer could not produce the bundle."""


class InputError(OptimizeError):
    """The checkpoint, sidecar or an option is invalid; the message names it."""


class ExportError(OptimizeError):
    """Exporting to ONNX or checking the exported model failed."""


class ParityError(ExportError):
    """ONNX Runtime output differs from torch beyond the tolerance."""


class QuantizationError(OptimizeError):
    """INT8 calibration/quantization failed or could not meet the accuracy limit."""


class EngineCompileError(OptimizeError):
    """TensorRT is unavailable or failed to build an engine."""
