"""edge-optimize --baseline / --calib-data: expectations written, bad baselines refused, nothing left behind."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.bundle import (
    ColorOrder,
    Format,
    Precision,
    Variant,
    read_bundle,
    sha256_file,
    write_bundle,
)
from optimize.__main__ import main
from optimize.baseline import open_baseline, references
from optimize.data import FrameFolder, load_samples
from optimize.errors import InputError
from tests.bundles import make_bundle
from tests.optimize.checkpoints import FAST_OPTIMIZE
from tests.optimize.frames import write_frames


def _args(run: Path, out: Path, *extra: str, version: str = "1.1.0") -> list[str]:
    return [
        str(run),
        "--out",
        str(out),
        "--name",
        "signs",
        "--version",
        version,
        "--targets",
        "cpu",
        *FAST_OPTIMIZE,
        *extra,
    ]


def _nothing_left(parent: Path, out: Path) -> bool:
    return not out.exists() and not [p for p in parent.iterdir() if ".partial-" in p.name or ".work-" in p.name]


def _rewrite(src: Path, dst: Path, **changes: object) -> Path:
    shutil.copytree(src, dst)
    (dst / "bundle.json").unlink()
    write_bundle(dst, dataclasses.replace(read_bundle(src), **changes))
    return dst


def test_frame_folder_reads_both_layouts_and_skips_unreadable(trained_run: Path, tmp_path: Path) -> None:
    flat = FrameFolder(write_frames(trained_run, tmp_path / "flat", n=7, layout="flat"))
    tree = FrameFolder(write_frames(trained_run, tmp_path / "tree", n=7, layout="imagefolder"))
    assert len(flat) == 7 and flat.skipped == 1
    assert len(tree) == 7 and tree.skipped == 0  # broken.jpg sits beside train/, val/ is held out
    assert tree.base == tmp_path / "tree" / "train"
    np.testing.assert_array_equal(flat[0].image, tree[0].image)
    assert flat[0].label is None and flat.fingerprint() != tree.fingerprint()


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable"])
def test_bad_calib_data_exits_2_and_leaves_nothing(
    case: str, trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "frames"
    if case != "missing":
        d.mkdir()
    if case == "unreadable":
        (d / "a.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    assert main(_args(trained_run, out, "--calib-data", str(d))) == 2
    err = capsys.readouterr().err
    assert {
        "missing": "does not exist",
        "empty": "holds no image files",
        "unreadable": "none of the 1 image files could be decoded",
    }[case] in err
    assert _nothing_left(tmp_path, out)


def _bad_baselines(base: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    m = read_bundle(base)
    (tmp / "empty").mkdir(parents=True)
    junk = tmp / "junk"
    junk.mkdir()
    (junk / "bundle.json").write_text('{"schema": "edgefleet.bundle/2", "name": "signs"}')
    tampered = tmp / "tampered"
    shutil.copytree(base, tampered)
    fp32 = tampered / m.variant("onnx-fp32").file
    fp32.write_bytes(fp32.read_bytes()[:-1] + b"\0")
    labels = list(m.labels)
    make_bundle(tmp / "tiny")
    return {
        "not a directory": (tmp / "nowhere", "is not a directory"),
        "empty directory": (tmp / "empty", "is not a bundle"),
        "invalid manifest": (junk, "is not a bundle"),
        "another model": (tmp / "tiny", "is a bundle of 'tiny'; expected a release of 'signs'"),
        "same release": (_rewrite(base, tmp / "same", version="1.1.0"), "the very release being built"),
        "input size": (
            _rewrite(base, tmp / "size", input=dataclasses.replace(m.input, shape=(None, 3, 64, 64))),
            "incompatible input spec (size (C, H, W): baseline (3, 64, 64), new (3, 32, 32))",
        ),
        "colour order": (
            _rewrite(base, tmp / "bgr", input=dataclasses.replace(m.input, color_order=ColorOrder.BGR)),
            "colour order: baseline BGR, new RGB",
        ),
        "normalisation": (
            _rewrite(base, tmp / "std", input=dataclasses.replace(m.input, std=(1.0, 1.0, 1.0))),
            "incompatible input spec (std:",
        ),
        "label order": (
            _rewrite(base, tmp / "order", labels=tuple(labels[1:2] + labels[:1] + labels[2:])),
            "same labels in another order (index 0",
        ),
        "label set": (_rewrite(base, tmp / "set", labels=tuple(labels[:-1] + ["zebra"])), "another label set"),
        "tampered file": (tampered, "does not match its manifest"),
    }


def test_bad_baselines_exit_2_with_a_clear_error_and_leave_nothing(
    trained_run: Path, baseline_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = _bad_baselines(baseline_bundle, tmp_path / "bad")
    for case, (directory, message) in cases.items():
        out = tmp_path / f"out-{case.replace(' ', '-')}"
        # a good baseline first: one bad one among several still fails the run
        assert main(_args(trained_run, out, "--baseline", str(baseline_bundle), "--baseline", str(directory))) == 2, (
            case
        )
        err = capsys.readouterr().err
        assert "edge-optimize: error: --baseline " in err and message in err, (case, err)
        assert _nothing_left(tmp_path, out), case


def test_expectations_against_a_baseline_dir_with_calib_frames(
    trained_run: Path, baseline_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = write_frames(trained_run, tmp_path / "frames", n=12, layout="flat")
    out = tmp_path / "signs-1.1.0"
    args = [
        a
        for a in _args(trained_run, out, "--baseline", str(baseline_bundle), "--calib-data", str(frames))
        if a != "--quiet"
    ]
    assert main(args) == 0
    m, base = read_bundle(out), read_bundle(baseline_bundle)
    printed = capsys.readouterr().out
    assert "| variant |" in printed and "cpu speedup [95% CI]" in printed
    assert "onnx-int8: cpu " in printed and "needs >= 1.1x" in printed  # the selection, with its interval
    assert f"agreement expectations: {len(m.expectations)} against signs@1.0.0, signs@1.1.0" in printed
    ids = [v.id for v in m.variants]
    assert ids == ["onnx-fp32", "onnx-int8", "onnx-fp32-frame", "onnx-int8-frame"]  # each with its frame-form twin
    # a CPU device of 1.0.0 may serve any variant of its class's order, and FP32
    served = list(
        dict.fromkeys([*base.selection["cpu-x86_64"].order, *base.selection["cpu-aarch64"].order, "onnx-fp32"])
    )
    keys = {(e.variant, e.baseline, e.baseline_variant) for e in m.expectations}
    assert keys == {(v, "signs@1.1.0", "onnx-fp32") for v in ids} | {(v, "signs@1.0.0", b) for v in ids for b in served}
    own = m.expectation("onnx-fp32", baseline="signs@1.1.0", baseline_sha256=m.variant("onnx-fp32").sha256)
    old = m.expectation("onnx-fp32", baseline="signs@1.0.0", baseline_sha256=base.variant("onnx-fp32").sha256)
    assert own is not None and old is not None
    # the same checkpoint exports to the same FP32 model: it agrees with itself and with 1.0.0's FP32 everywhere
    assert own.heldout == own.calib == old.heldout == old.calib == 1.0
    for e in m.expectations:
        assert e.heldout_frames == 48 and e.calib_frames == 12 and 0.0 <= e.expected <= 1.0
    int8 = m.expectation("onnx-int8", baseline="signs@1.1.0", baseline_sha256=m.variant("onnx-fp32").sha256)
    assert int8 is not None and int8.calib is not None and int8.expected == min(int8.heldout, int8.calib)
    # per class of the baseline, on the 48 held-out and 12 calibration frames together
    assert own.per_class and all(c.agreement == 1.0 for c in own.per_class)
    for e in m.expectations:
        assert [c.label for c in e.per_class] == [x for x in m.labels if x in {c.label for c in e.per_class}]
        assert all(c.frames >= 10 for c in e.per_class) and sum(c.frames for c in e.per_class) <= 60
    assert {c.label for c in int8.per_class} == {c.label for c in own.per_class}  # both keyed by the FP32
    # calibrated on the 12 frames, not on the train split 1.0.0 was calibrated on
    assert m.variant("onnx-int8").sha256 != base.variant("onnx-int8").sha256
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"]["frames"] == 12 and report["calibration"]["source"] == str(frames)
    assert len(report["expectations"]) == len(m.expectations)
    assert "## Agreement expectations" in (out / "report.md").read_text()
    assert m.gates.min_agreement == 0.5
    assert report["warnings"] == [] and "**Warning:**" not in (out / "report.md").read_text()


def test_served_variants_ort_cannot_run_are_skipped_with_a_log_line(
    trained_run: Path, baseline_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "mixed"
    shutil.copytree(baseline_bundle, d)
    m = read_bundle(d)
    (d / "model.engine").write_bytes(b"engine bytes" * 100)
    (d / "broken.onnx").write_bytes(b"not an onnx model" * 100)
    extra = (
        Variant(
            "trt-fp16-sm87",
            Format.TENSORRT_ENGINE,
            Precision.FP16,
            "model.engine",
            sha256_file(d / "model.engine"),
            1200,
        ),
        Variant("onnx-broken", Format.ONNX, Precision.FP32, "broken.onnx", sha256_file(d / "broken.onnx"), 1700),
    )
    selection = {
        **m.selection,
        "jetson-orin": dataclasses.replace(m.selection["cpu-x86_64"], order=("trt-fp16-sm87", "onnx-fp32")),
        "cuda": dataclasses.replace(m.selection["cpu-x86_64"], order=("onnx-broken", "onnx-fp32")),
    }
    (d / "bundle.json").unlink()
    write_bundle(d, dataclasses.replace(m, variants=m.variants + extra, selection=selection))
    bl = open_baseline(d, origin="--baseline mixed", targets=("jetson-orin", "cuda"), check=lambda _m: None)
    assert bl.served == ("trt-fp16-sm87", "onnx-broken", "onnx-fp32")
    frames = load_samples(FrameFolder(write_frames(trained_run, tmp_path / "f", n=4, layout="flat")), 4, m.input)
    with caplog.at_level(logging.WARNING, logger="optimize.baseline"):
        refs = references(bl, frames, frames, threads=1)
    assert [r.variant for r in refs] == ["onnx-fp32"] and len(refs[0].frames.heldout) == 4
    assert "ONNX Runtime (CPU) cannot run a tensorrt-engine" in caplog.text
    assert "skipping expectations against onnx-broken" in caplog.text


def test_check_is_applied_before_the_files_are_verified(baseline_bundle: Path) -> None:
    def refuse(_m: object) -> None:
        raise InputError("refused")

    with pytest.raises(InputError, match="refused"):
        open_baseline(baseline_bundle, origin="--baseline x", targets=("cpu-x86_64",), check=refuse)


def _permuted(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose FP32 rotates its output classes (and serves only that): a label-permuted release."""
    import onnx
    from onnx import helper, numpy_helper

    shutil.copytree(src, dst)
    m = read_bundle(src)
    v = m.variant("onnx-fp32")
    model = onnx.load(str(dst / v.file))
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_raw" if o == out else o for o in node.output]
    n = len(m.labels)
    model.graph.initializer.append(numpy_helper.from_array(np.roll(np.arange(n, dtype=np.int64), 1), "ROLL"))
    model.graph.node.append(helper.make_node("Gather", [f"{out}_raw", "ROLL"], [out], axis=1))
    onnx.save(model, str(dst / v.file))
    fp32 = dataclasses.replace(v, sha256=sha256_file(dst / v.file), size=(dst / v.file).stat().st_size)
    selection = {hw: dataclasses.replace(e, order=("onnx-fp32",)) for hw, e in m.selection.items()}
    (dst / "bundle.json").unlink()
    write_bundle(dst, dataclasses.replace(m, variants=(fp32,), selection=selection, expectations=()))
    return dst


def test_an_expectation_below_the_floor_is_warned_in_the_log_and_the_report(
    trained_run: Path, baseline_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = _permuted(baseline_bundle, tmp_path / "permuted-1.0.0")
    out = tmp_path / "signs-1.1.0"
    with caplog.at_level(logging.WARNING, logger="optimize.pipeline"):
        assert main(_args(trained_run, out, "--baseline", str(broken))) == 0
    m = read_bundle(out)
    against = [e for e in m.expectations if e.baseline == "signs@1.0.0"]
    assert {e.variant for e in against} == {"onnx-fp32", "onnx-int8", "onnx-fp32-frame", "onnx-int8-frame"}
    assert all(e.expected < m.gates.min_agreement for e in against)  # it agrees with a rotated copy of itself
    report = json.loads((out / "report.json").read_text())
    assert len(report["warnings"]) == 4
    for w in report["warnings"]:
        assert "below the floor min_agreement 50.0%: devices running signs@1.0.0/onnx-fp32 will refuse" in w
        assert w in caplog.text and f"**Warning:** {w}" in (out / "report.md").read_text()
    own = [e for e in m.expectations if e.baseline == "signs@1.1.0"]
    assert own and all(e.expected >= m.gates.min_agreement for e in own)  # its own FP32 is fine: no warning
