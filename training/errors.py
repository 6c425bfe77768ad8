"""Errors of the training stage.

::

    TrainingError (Exception)
    ├── ConfigError        a bad YAML file, an unknown key, a value of the wrong type/range
    ├── CheckpointError    a checkpoint that cannot be read, written or resumed from
    └── LaunchError        the distributed workers failed (the message names the rank)

Dataset problems surface as :class:`models.datasets.DatasetError` and model
problems as :class:`models.zoo.ZooError`; the CLI reports all of them as bad
input (exit code 2).
"""

from __future__ import annotations

__all__ = ["TrainingError", "ConfigError", "CheckpointError", "LaunchError"]


class TrainingError(Exception):
    """Base class of the training stage's errors."""


class ConfigError(TrainingError):
    """The run configuration is invalid; the message names the key."""


class CheckpointError(TrainingError):
    """A checkpoint or sidecar cannot be read, written or resumed from."""


class LaunchError(TrainingError):
    """The distributed launcher or one of its workers failed."""
