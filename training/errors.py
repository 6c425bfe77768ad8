"""Errors of the training stage, and what else a run can end with.

::

    TrainingError (Exception)     base: the run cannot start, continue or finish
    ├── TrainingConfigError       a bad YAML file, an unknown key, a value of the wrong type/range
    ├── CheckpointError           a checkpoint that cannot be read, written or resumed from
    └── LaunchError               the distributed workers failed (the message names the rank)

    from models (models.errors.ModelsError), raised through unwrapped:
    ├── DatasetError (ValueError) models.datasets: the dataset cannot be opened or read
    └── ZooError (ValueError)     models.zoo: an unknown architecture, bad arguments, weights
                                  that do not fit

No other module of this package defines an error. The CLI reports
``TrainingConfigError``, ``CheckpointError``, ``DatasetError`` and ``ZooError`` as bad
input (exit code 2), ``LaunchError`` and any other ``TrainingError`` as a
failed run (exit code 1). A ``TypeError`` from :mod:`training.data` (a sample
without the label or boxes its task needs) is a mismatch between the dataset
and the task, not an input the CLI reports.
"""

from __future__ import annotations

__all__ = ["TrainingError", "TrainingConfigError", "CheckpointError", "LaunchError"]


class TrainingError(Exception):
    """Base class of the training stage's errors."""


class TrainingConfigError(TrainingError):
    """The run configuration is invalid; the message names the key."""


class CheckpointError(TrainingError):
    """A checkpoint or sidecar cannot be read, written or resumed from."""


class LaunchError(TrainingError):
    """The distributed launcher or one of its workers failed."""
