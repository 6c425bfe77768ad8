"""models.bundle: round trip, canonical JSON, strict validation naming the field, file checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models.bundle import (
    MANIFEST_NAME,
    AgreementExpectation,
    BundleError,
    ClassAgreement,
    Gates,
    Manifest,
    canonical_json,
    load_manifest,
    parse_semver,
    read_bundle,
    semver_key,
    write_bundle,
)
from tests.bundles import make_bundle


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, Manifest]:
    return tmp_path, make_bundle(tmp_path)


def test_round_trip_is_lossless_and_canonical(bundle: tuple[Path, Manifest]) -> None:
    d, m = bundle
    again = read_bundle(d)
    assert again == m
    assert (d / MANIFEST_NAME).read_bytes() == m.to_json() + b"\n"
    assert Manifest.from_dict(json.loads(m.to_json())).to_json() == m.to_json()
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()


def _mutate(m: Manifest, path: str, value: Any) -> dict[str, Any]:
    data = m.to_dict()
    node: Any = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if value is KeyError:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("schema", "edgefleet.bundle/9", "schema", "unsupported schema"),
        ("name", "Bad Name", "name", "must match"),
        ("version", "1.0", "version", "semantic version"),
        ("task", "dance", "task", "must be one of"),
        ("labels", [], "labels", "at least one label"),
        ("variants.0.sha256", "abc", "variants[0].sha256", "64 lowercase hex"),
        ("variants.0.size", 0, "variants[0].size", "must be > 0"),
        ("variants.0.file", "../evil.onnx", "variants[0].file", "plain file name"),
        ("variants.0.precision", "int4", "variants[0].precision", "must be one of"),
        ("variants.0.requires.accelerators", ["tpu"], "variants[0].requires.accelerators[0]", "must be one of"),
        ("variants.0.id", KeyError, "variants[0].id", "missing required field"),
        ("selection.cuda.order", ["nope"], "selection.cuda.order[0]", "unknown variant 'nope'"),
        ("input.shape", [None, 3, 32], "input.shape", "expected 4 dimensions"),
        ("input.std", [1, 0, 1], "input.std", "every std must be > 0"),
        ("input.dtype", "int64", "input.dtype", "must be one of"),
        ("gates.latency_budget_ms", -1, "gates.latency_budget_ms", "must be > 0"),
        ("gates.min_agreement", 1.5, "gates.min_agreement", r"within \[0, 1\]"),
        ("output.tensors", [], "output.tensors", "at least one output tensor"),
        ("provenance.code_version", 3, "provenance.code_version", "expected str, got int"),
    ],
)
def test_validation_names_the_field(
    bundle: tuple[Path, Manifest], path: str, value: Any, field: str, message: str
) -> None:
    _, m = bundle
    with pytest.raises(BundleError, match=message) as err:
        Manifest.from_dict(_mutate(m, path, value))
    assert err.value.field == field


def test_not_json_and_duplicate_variants(bundle: tuple[Path, Manifest]) -> None:
    _, m = bundle
    with pytest.raises(BundleError, match="not valid JSON"):
        load_manifest(b"{nope")
    data = m.to_dict()
    data["variants"].append(dict(data["variants"][0]))
    with pytest.raises(BundleError, match="duplicate variant id") as err:
        Manifest.from_dict(data)
    assert err.value.field == "variants[1].id"


def test_files_are_checked_by_size_then_hash(bundle: tuple[Path, Manifest]) -> None:
    d, _ = bundle
    model = d / "model.onnx"
    data = bytearray(model.read_bytes())
    model.write_bytes(bytes(data[:-1]))
    with pytest.raises(BundleError, match="manifest says") as err:
        read_bundle(d)
    assert err.value.field == "variants[0].size"
    data[-1] ^= 1
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        read_bundle(d)
    assert err.value.field == "variants[0].sha256"
    assert read_bundle(d, verify=False).name == "tiny"
    model.unlink()
    with pytest.raises(BundleError, match="is missing"):
        read_bundle(d)
    with pytest.raises(BundleError, match="is .* a bundle directory"):
        read_bundle(d / "nowhere")


def test_write_bundle_refuses_a_bad_manifest_and_leaves_the_old_one(bundle: tuple[Path, Manifest]) -> None:
    d, m = bundle
    before = (d / MANIFEST_NAME).read_bytes()
    import dataclasses

    bad = dataclasses.replace(m, variants=(dataclasses.replace(m.variants[0], sha256="0" * 64),))
    with pytest.raises(BundleError, match="sha256"):
        write_bundle(d, bad)
    assert (d / MANIFEST_NAME).read_bytes() == before
    assert not [p for p in d.iterdir() if p.name.startswith(".bundle.")]


def test_semver_and_gate_overrides() -> None:
    assert parse_semver("1.2.3-rc.1+build.5") == (1, 2, 3, "rc.1")
    assert semver_key("1.0.0-rc.1") < semver_key("1.0.0") < semver_key("1.0.1") < semver_key("1.10.0")
    with pytest.raises(BundleError, match="semantic version"):
        parse_semver("01.2.3")
    g = Gates(latency_budget_ms=20.0)
    assert g.with_overrides({"latency_budget_ms": 30, "min_agreement": None}).latency_budget_ms == 30
    with pytest.raises(BundleError, match="gates.min_agreement"):
        g.with_overrides({"min_agreement": 2})


def _with_classes(d: Path, m: Manifest) -> Manifest:
    import dataclasses

    per_class = (ClassAgreement("red", 0.98, 40), ClassAgreement("green", 0.9, 12))
    e = AgreementExpectation(
        variant="onnx-fp32",
        baseline="tiny@0.9.0",
        baseline_variant="onnx-fp32",
        baseline_sha256="ab" * 32,
        heldout=0.95,
        heldout_frames=200,
        per_class=per_class,
    )
    m = dataclasses.replace(m, expectations=(e,))
    write_bundle(d, m)
    return m


def test_per_class_expectations_round_trip_and_older_manifests_have_none(bundle: tuple[Path, Manifest]) -> None:
    d, m = bundle
    m = _with_classes(d, m)
    again = read_bundle(d)
    assert again == m and again.expectations[0].per_class[1] == ClassAgreement("green", 0.9, 12)
    data = m.to_dict()
    del data["expectations"][0]["per_class"]  # written before per-class figures existed
    assert Manifest.from_dict(data).expectations[0].per_class == ()


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("expectations.0.per_class.0.label", "purple", "expectations[0].per_class[0].label", "unknown label 'purple'"),
        ("expectations.0.per_class.1.label", "red", "expectations[0].per_class[1].label", "duplicate class 'red'"),
        ("expectations.0.per_class.0.agreement", 1.5, "expectations[0].per_class[0].agreement", r"within \[0, 1\]"),
        ("expectations.0.per_class.0.agreement", "high", "expectations[0].per_class[0].agreement", "expected float"),
        ("expectations.0.per_class.1.frames", 0, "expectations[0].per_class[1].frames", "must be > 0"),
        ("expectations.0.per_class.1.frames", KeyError, "expectations[0].per_class[1].frames", "missing required"),
        ("expectations.0.per_class", {"red": 0.9}, "expectations[0].per_class", "expected list"),
        ("gates.class_agreement_effect", 0.0, "gates.class_agreement_effect", r"within \[0.05, 0.95\]"),
    ],
)
def test_per_class_and_gate_validation_names_the_field(
    bundle: tuple[Path, Manifest], path: str, value: Any, field: str, message: str
) -> None:
    d, m = bundle
    m = _with_classes(d, m)
    with pytest.raises(BundleError, match=message) as err:
        Manifest.from_dict(_mutate(m, path, value))
    assert err.value.field == field


def test_gate_defaults_test_classes_and_run_long_enough_for_them() -> None:
    g = Gates(latency_budget_ms=20.0)
    assert (g.class_agreement_effect, g.shadow_frames, g.min_shadow_frames) == (0.5, 350, 10)
    assert Gates.from_dict({"latency_budget_ms": 20.0}) == g
