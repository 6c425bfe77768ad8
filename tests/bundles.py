"""Tiny, real bundles for tests: the reference bundles of :mod:`models.tiny`, under the names tests use.

See :mod:`models.tiny` for the behaviours (``ok``, ``permuted``, ``nan``, ``slow``,
``nan-on-red``, ``no-blue``, ``not-onnx``) and :func:`make_multi_bundle`.
"""

from __future__ import annotations

from models.tiny import LABELS, SIZE, make_bundle, make_multi_bundle, make_onnx

__all__ = ["LABELS", "SIZE", "make_bundle", "make_multi_bundle", "make_onnx"]
