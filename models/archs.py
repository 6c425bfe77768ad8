"""The zoo's architectures as data: names, tasks, input defaults — no torch.

:mod:`models.zoo` builds the modules; this module is what a CLI needs to list
and validate architectures (``edge-train --help`` answers without importing
torch) and what the optimizer needs to write an input spec.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.bundle import ColorOrder, InputSpec, Layout, ResizeMode
from models.errors import ModelsError

__all__ = ["ARCHS", "ArchInfo", "ZooError", "arch_info", "default_input_spec"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ZooError(ModelsError, ValueError):
    """An unknown architecture/task, bad arguments, or weights that do not fit."""


@dataclass(frozen=True)
class ArchInfo:
    tasks: tuple[str, ...]
    image_size: int  # default square input size, pixels
    head_prefixes: tuple[str, ...]  # state_dict keys of the class-count-dependent head
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


ARCHS: dict[str, ArchInfo] = {
    "mobilenet_v3_small": ArchInfo(("classification",), 224, ("classifier.3.",)),
    "mobilenet_v3_large": ArchInfo(("classification",), 224, ("classifier.3.",)),
    "resnet18": ArchInfo(("classification",), 224, ("fc.",)),
    "efficientnet_b0": ArchInfo(("classification",), 224, ("classifier.1.",)),
    "fcos_mnv3": ArchInfo(("detection",), 320, ("head.cls_logits.",)),
    "lraspp_mobilenet_v3_large": ArchInfo(
        ("segmentation",),
        320,
        ("model.classifier.low_classifier.", "model.classifier.high_classifier."),
    ),
}


def arch_info(arch: str, task: str) -> ArchInfo:
    if arch not in ARCHS:
        known = {a: list(i.tasks) for a, i in ARCHS.items()}
        raise ZooError(f"unknown arch {arch!r}; known archs and their tasks: {known}")
    info = ARCHS[arch]
    if task not in info.tasks:
        raise ZooError(f"arch {arch!r} supports tasks {list(info.tasks)}, got task {task!r}")
    return info


def default_input_spec(arch: str, task: str, image_size: int | None = None) -> InputSpec:
    """The :class:`InputSpec` a model from :func:`build_model` expects (RGB, NCHW, ImageNet norm)."""
    info = arch_info(arch, task)
    size = image_size or info.image_size
    return InputSpec(
        name="input",
        shape=(None, 3, size, size),
        dtype="float32",
        layout=Layout.NCHW,
        color_order=ColorOrder.RGB,
        resize=ResizeMode.STRETCH,
        scale=1.0 / 255.0,
        mean=info.mean,
        std=info.std,
    )
