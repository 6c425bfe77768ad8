"""Inputs the demo makes for itself: camera videos, hardware profiles, a bad checkpoint.

- Camera videos: real MJPEG ``.avi`` files (``cv2.VideoWriter``) whose frames
  are synthetic road signs from :mod:`models.datasets`, one sign per frame;
  every vehicle gets its own stretch of the validation split. One sign per
  frame because the shadow gate's sequential test counts frames as
  independent trials: a sign held for six frames would be counted six times,
  and the test's error rates would be several times what the gates ask for.
- Calibration frames: the frames of those videos, decoded with OpenCV as the
  agents decode them, for ``edge-optimize --calib-data`` (the deployment
  domain: INT8 calibration and the agreement the vehicles should expect).
- Hardware profiles: the override files ``edge-agent enroll
  --hardware-profile`` takes, so four processes on one x86 host present
  themselves as different boards (docs/contracts.md §6).
- The bad release: the trained checkpoint with its classifier rows rotated by
  one class — what a training job with a wrong label order produces. It loads,
  exports and runs fine; only the shadow run on the vehicle can tell.

This module does not train, optimize or run anything; it writes files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.datasets import DatasetSpec, open_dataset

# name -> (hardware class it should land in, overrides on top of the host's detected profile)
HARDWARE_PROFILES: dict[str, tuple[str, dict[str, Any]]] = {
    "x86-a": ("cpu-x86_64", {}),
    "x86-b": ("cpu-x86_64", {}),
    "arm64": ("cpu-aarch64", {"arch": "aarch64", "cpu_features": ["asimd", "fp16"]}),
    "orin": (
        "jetson-orin",
        {
            "arch": "aarch64",
            "accelerator": "jetson",
            "board": "NVIDIA Jetson AGX Orin (simulated)",
            "gpu_name": "Orin",
            "compute_capability": "8.7",
            "jetpack_version": "6.1",
            "cuda_version": "12.6",
            "tensorrt_version": None,  # TensorRT absent: an ONNX variant serves
        },
    ),
}
PROFILE_ORDER = ("x86-a", "arm64", "orin", "x86-b")


def profile_for(index: int) -> str:
    """Profile name of vehicle ``index`` (cycles through :data:`PROFILE_ORDER`)."""
    return PROFILE_ORDER[index % len(PROFILE_ORDER)]


def write_profile(path: Path, name: str) -> Path:
    """Write the override JSON for profile ``name``; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(HARDWARE_PROFILES[name][1], indent=2) + "\n")
    return path


def write_camera_video(
    path: Path,
    *,
    vehicle: int,
    seconds: float = 12.0,
    fps: int = 15,
    size: int = 160,
    hold: int = 1,
    image_size: int = 64,
) -> int:
    """Write an MJPEG video of passing road signs (``hold`` frames each); returns the frame count.

    Vehicle ``i`` films signs ``i * n .. (i + 1) * n - 1`` of the validation split
    (``n`` signs per video), so the fleet's cameras see disjoint signs.
    """
    ds = open_dataset(DatasetSpec(name="synthetic-signs", seed=0, image_size=image_size, val_size=2000), split="val")
    frames = int(seconds * fps)
    if frames <= 0 or hold < 1:
        raise ValueError(f"need seconds * fps >= 1 and hold >= 1, got {seconds} s at {fps} fps, hold {hold}")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size, size))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write MJPEG video to {path}")
    try:
        signs = -(-frames // hold)
        first = (vehicle * signs) % max(1, len(ds) - signs)
        for f in range(frames):
            sample = ds[(first + f // hold) % len(ds)]
            frame = cv2.resize(sample.image, (size, size), interpolation=cv2.INTER_LINEAR)
            writer.write(np.ascontiguousarray(frame))
    finally:
        writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise OSError(f"OpenCV wrote nothing to {path}")
    return frames


def extract_frames(videos: list[Path], out_dir: Path, *, every: int = 1) -> int:
    """Decode every ``every``-th frame of each video into ``out_dir/<video>-<n>.png``; returns the count.

    PNG keeps the decoded pixels exactly: the optimizer calibrates on what the
    agents' OpenCV capture hands their models. Raises :class:`OSError` for a
    video OpenCV cannot open or one without a frame.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for video in videos:
        cap = cv2.VideoCapture(str(video))
        if not cap.isOpened():
            raise OSError(f"OpenCV cannot open {video}")
        index = kept = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                if index % every == 0:
                    target = out_dir / f"{video.stem}-{index:05d}.png"
                    if not cv2.imwrite(str(target), frame):
                        raise OSError(f"OpenCV cannot write {target}")
                    kept += 1
                index += 1
        finally:
            cap.release()
        if index == 0:
            raise OSError(f"{video} holds no frame OpenCV can decode")
        written += kept
    return written


def _classifier_keys(state: dict[str, Any], num_classes: int) -> tuple[str, str | None]:
    """The last 2-D weight with ``num_classes`` rows (the classifier head) and its bias."""
    candidates = [
        k
        for k, v in state.items()
        if k.endswith(".weight") and getattr(v, "ndim", 0) == 2 and v.shape[0] == num_classes
    ]
    if not candidates:
        raise ValueError(f"no classifier layer with {num_classes} output rows in the checkpoint")
    weight = candidates[-1]
    bias = weight[: -len("weight")] + "bias"
    return weight, bias if bias in state else None


def write_label_shifted_run(run_dir: Path, out_dir: Path, *, checkpoint: str = "best") -> Path:
    """Copy ``run_dir`` to ``out_dir`` with the classifier's classes rotated by one.

    Writes ``checkpoints/<checkpoint>.pt`` (and ``last.pt``) plus the sidecars with the
    new ``checkpoint_sha256``; returns ``out_dir``.
    """
    import torch  # the demo host trains, so torch is here; only this step needs it

    src_pt = run_dir / "checkpoints" / f"{checkpoint}.pt"
    src_json = src_pt.with_suffix(".json")
    if not src_pt.is_file() or not src_json.is_file():
        raise FileNotFoundError(f"{src_pt} or its sidecar is missing; did training finish?")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(run_dir, out_dir, ignore=shutil.ignore_patterns("tb", "*.pt"))
    sidecar = json.loads(src_json.read_text())
    ckpt = torch.load(src_pt, map_location="cpu", weights_only=True)
    weight, bias = _classifier_keys(ckpt["model"], int(sidecar["num_classes"]))
    ckpt["model"][weight] = torch.roll(ckpt["model"][weight], shifts=1, dims=0)
    if bias:
        ckpt["model"][bias] = torch.roll(ckpt["model"][bias], shifts=1, dims=0)
    for name in {checkpoint, "last", "best"}:
        dst = out_dir / "checkpoints" / f"{name}.pt"
        torch.save(ckpt, dst)
        digest = hashlib.sha256(dst.read_bytes()).hexdigest()
        meta = {**sidecar, "checkpoint_sha256": digest, "run": str(out_dir)}
        (out_dir / "checkpoints" / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir
