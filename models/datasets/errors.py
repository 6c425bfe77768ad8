"""Errors raised by the dataset readers.

::

    DatasetError (ModelsError, ValueError)   bad spec, missing directory, nothing readable
    ├── EmptyDatasetError                    a class folder / split holds no usable image
    └── AnnotationError                      a malformed COCO annotation (names its id)

Unreadable single images are *not* errors: readers skip them and count them in
``Dataset.skipped``; only a dataset where every image is bad raises. The
root of the whole ``models`` tree is :class:`models.errors.ModelsError`.
"""

from __future__ import annotations

from models.errors import ModelsError

__all__ = ["DatasetError", "EmptyDatasetError", "AnnotationError"]


class DatasetError(ModelsError, ValueError):
    """A dataset cannot be opened or read; the message names the path or field."""


class EmptyDatasetError(DatasetError):
    """A split, class folder or annotation file yields no usable sample."""


class AnnotationError(DatasetError):
    """A malformed annotation; ``annotation_id`` names it."""

    def __init__(self, message: str, *, annotation_id: object = None) -> None:
        self.annotation_id = annotation_id
        super().__init__(message)
