"""The root of every error the shared ``models`` package raises, and the map of its tree.

::

    ModelsError (Exception)                  base: the shared model layer refused an input or failed
    ├── BundleError (ValueError)             models.bundle: a manifest or bundle directory breaks the
    │                                        contract (``field`` names the culprit)
    ├── ZooError (ValueError)                models.archs (re-exported by models.zoo): an unknown
    │                                        architecture or task, bad arguments, weights that do not fit
    ├── NoCompatibleVariant (LookupError)    models.hardware: no variant of a bundle runs on a profile
    ├── UnknownReasonCode (ValueError)       models.reasons: a string that is no reason code
    ├── DatasetError (ValueError)            models.datasets.errors: bad spec, missing directory,
    │   │                                    nothing readable
    │   ├── EmptyDatasetError                a class folder / split holds no usable image
    │   └── AnnotationError                  a malformed COCO annotation (``annotation_id``)
    ├── ModelRuntimeError (RuntimeError)     models.runtime.errors: the runtime layer refused or failed
    │   ├── ModelLoadError                   the bundle/variant cannot be opened as a model
    │   │   ├── BackendUnavailable           the backend is not installed or cannot run the variant here
    │   │   └── EngineBuildError             TensorRT could not build an engine from the ONNX
    │   └── InferenceError                   a loaded model failed on an input
    └── StepFailed (RuntimeError)            models.procs: a child process failed or did not finish
                                             (``log_path`` names its log)

Each class lives in the module that raises it; this module holds only the
root, so ``except ModelsError`` catches anything the package refuses while
``except ValueError`` (or ``LookupError``, ``RuntimeError``) callers keep
working through each class's second base. Third-party errors (ONNX Runtime,
TensorRT, OpenCV) are wrapped at the edge with ``raise ... from e``.

This module defines no error of its own beyond the root and imports nothing.
"""

from __future__ import annotations

__all__ = ["ModelsError"]


class ModelsError(Exception):
    """Base class of every error raised by the ``models`` package."""
