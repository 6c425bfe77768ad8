"""One error root for ``models``: every error the package defines is a ``ModelsError`` and keeps
the standard base its callers catch (``except ValueError`` and the like go on working)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from models.archs import ZooError
from models.bundle import BundleError
from models.datasets.errors import AnnotationError, DatasetError, EmptyDatasetError
from models.errors import ModelsError
from models.hardware import NoCompatibleVariant
from models.procs import StepFailed
from models.reasons import UnknownReasonCode
from models.runtime.errors import (
    BackendUnavailable,
    EngineBuildError,
    InferenceError,
    ModelLoadError,
    ModelRuntimeError,
)

ROOT = Path(__file__).resolve().parents[2]

TREE: list[tuple[type[Exception], type[Exception]]] = [
    (BundleError, ValueError),
    (ZooError, ValueError),
    (NoCompatibleVariant, LookupError),
    (UnknownReasonCode, ValueError),
    (DatasetError, ValueError),
    (EmptyDatasetError, DatasetError),
    (AnnotationError, DatasetError),
    (ModelRuntimeError, RuntimeError),
    (ModelLoadError, ModelRuntimeError),
    (BackendUnavailable, ModelLoadError),
    (EngineBuildError, ModelLoadError),
    (InferenceError, ModelRuntimeError),
    (StepFailed, RuntimeError),
]


@pytest.mark.parametrize(("cls", "base"), TREE, ids=[c.__name__ for c, _ in TREE])
def test_every_models_error_has_the_one_root_and_its_standard_base(cls: type[Exception], base: type[Exception]) -> None:
    assert issubclass(cls, ModelsError)
    assert issubclass(cls, base)


def test_the_tree_lists_every_error_class_the_package_defines() -> None:
    defined = set()
    for path in (ROOT / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef) and node.bases:
                names = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                if any(n.endswith(("Error", "Exception")) or n in {c.__name__ for c, _ in TREE} for n in names):
                    defined.add(node.name)
    assert defined - {"ModelsError"} == {c.__name__ for c, _ in TREE}
    doc = (ROOT / "models" / "errors.py").read_text()
    assert all(c.__name__ in doc for c, _ in TREE), "models/errors.py must draw every class"


def test_keyword_fields_survive_the_new_base() -> None:
    assert BundleError("bad", field="version").field == "version"
    assert AnnotationError("bad", annotation_id=7).annotation_id == 7
    assert StepFailed("died", log_path=Path("x.log")).log_path == Path("x.log")
