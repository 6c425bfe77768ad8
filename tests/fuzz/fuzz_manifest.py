"""atheris: :func:`models.bundle.load_manifest` on arbitrary bytes raises only ``BundleError``.

The manifest (``bundle.json``) is what a publisher uploads and what a device reads after its
download; the seeds are the manifests of the reference bundles of :mod:`models.tiny`.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["models"]):
    from models.bundle import BundleError, load_manifest

__all__ = ["SEEDS", "one_input"]


def _seeds() -> list[bytes]:
    from models.tiny import make_bundle

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, behaviour in enumerate(("ok", "nan", "slow")):
            directory = Path(tmp) / str(i)
            make_bundle(directory, name=f"seed{i}", version=f"1.{i}.0", behaviour=behaviour)
            out.append((directory / "bundle.json").read_bytes())
    return out + [b"{}", b'{"schema": 1}', b"[]"]


SEEDS = _seeds()


def one_input(data: bytes) -> None:
    with contextlib.suppress(BundleError):  # the documented error; anything else is a crash
        load_manifest(data)


if __name__ == "__main__":
    from tests.fuzz.common import main

    main(one_input, SEEDS)
