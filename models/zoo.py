"""Model architectures: one factory, :func:`build_model`, over torchvision.

Everything is built with ``weights=None``: nothing is downloaded; pretrained
weights come only from a local file (``init_weights=PATH``). The only module
in ``models/`` that imports torch.

Tasks and what ``forward`` returns in eval mode (raw tensors, so the module
exports to ONNX unchanged; contracts §3 decoders do the rest):

- classification: logits ``[N, C]`` (``topk`` decoder);
- detection (``fcos_mnv3``): a tuple ``(boxes [N, A, 4], scores [N, A, C])`` —
  boxes xyxy in input pixels, scores probabilities (``boxes`` decoder applies
  the threshold and class-wise NMS). In train mode ``forward(images, targets)``
  returns a loss dict;
- segmentation (``lraspp_mobilenet_v3_large``): logits ``[N, C, H, W]``.

This module does not train, export or preprocess.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from models.archs import ARCHS, ArchInfo, ZooError, default_input_spec
from models.archs import arch_info as _arch
from models.bundle import Task

__all__ = [
    "ARCHS",
    "ArchInfo",
    "ZooError",
    "FcosMnv3",
    "build_model",
    "default_input_spec",
    "load_init_weights",
]

log = logging.getLogger(__name__)


def build_model(
    arch: str,
    task: str,
    num_classes: int,
    *,
    image_size: int | None = None,
    init_weights: str | os.PathLike[str] | None = None,
    **kw: Any,
) -> nn.Module:
    """Build ``arch`` for ``task`` with ``num_classes`` outputs (random init or ``init_weights``).

    Raises :class:`ZooError` for an unknown arch/task, a bad argument or weights
    that do not fit (naming the keys and shapes).
    """
    info = _arch(arch, task)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ZooError(f"num_classes must be a positive int, got {num_classes!r}")
    size = image_size or info.image_size
    model: nn.Module
    try:
        if task == Task.CLASSIFICATION.value:
            if kw:
                raise ZooError(f"arch {arch!r} takes no extra keyword arguments, got {sorted(kw)}")
            model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        elif arch == "fcos_mnv3":
            model = FcosMnv3(num_classes, image_size=size, **kw)
        else:
            if kw:
                raise ZooError(f"arch {arch!r} takes no extra keyword arguments, got {sorted(kw)}")
            model = _Segmenter(num_classes)
    except TypeError as e:
        raise ZooError(f"bad arguments for arch {arch!r}: {e}") from e
    if init_weights is not None:
        load_init_weights(model, init_weights, head_prefixes=info.head_prefixes)
    return model


def load_init_weights(
    model: nn.Module, path: str | os.PathLike[str], *, head_prefixes: tuple[str, ...] = ()
) -> list[str]:
    """Load a local state_dict (or a training checkpoint's ``"model"``) into ``model``.

    Keys under ``head_prefixes`` whose shapes differ (another class count) are
    skipped with a warning; any other missing, unexpected or mis-shaped key is
    a :class:`ZooError` listing them. Returns the skipped keys.
    """
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ZooError(f"init weights {path} do not exist") from e
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ZooError(f"init weights {path} are not a loadable weights-only state_dict: {first}") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ZooError(f"init weights {path}: expected a state_dict (name -> tensor)")
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    head_mismatch = [k for k in set(own) & set(state) if state[k].shape != own[k].shape]
    if head_prefixes and head_mismatch and all(k.startswith(head_prefixes) for k in head_mismatch):
        log.warning(
            "init weights %s: skipping the classifier head (%s): its class count differs",
            path,
            ", ".join(sorted(head_mismatch)),
        )
        shapes = []
    else:
        head_mismatch = []
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:10]}")
        raise ZooError(f"init weights {path} do not fit {type(model).__name__}: " + "; ".join(parts))
    for k in head_mismatch:
        state[k] = own[k]
    model.load_state_dict(state)
    return sorted(head_mismatch)


class _Segmenter(nn.Module):
    """LR-ASPP over MobileNetV3-Large returning the ``[N, C, H, W]`` logits tensor."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=num_classes
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x)["out"]
        return out


# --------------------------------------------------------------------------- detection


def _conv_bn(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Head(nn.Module):
    def __init__(self, channels: int, num_classes: int, depth: int) -> None:
        super().__init__()
        self.cls_tower = nn.Sequential(*[_conv_bn(channels, channels) for _ in range(depth)])
        self.reg_tower = nn.Sequential(*[_conv_bn(channels, channels) for _ in range(depth)])
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        prior = 0.01  # focal-loss prior: start predicting background everywhere
        bias_init = -math.log((1 - prior) / prior)
        nn.init.constant_(self.cls_logits.bias, bias_init)  # type: ignore[arg-type]
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.constant_(self.bbox_reg.bias, 1.0)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c = self.cls_tower(x)
        r = self.reg_tower(x)
        return self.cls_logits(c), self.bbox_reg(r), self.centerness(r)


class FcosMnv3(nn.Module):
    """Single-level FCOS (stride 8) on a MobileNetV3 backbone with a top-down neck.

    Each location of the stride-8 map predicts class scores (sigmoid, focal
    loss), distances to the box sides (GIoU loss) and centre-ness; the scores
    it exports are ``sqrt(p_class * p_centerness)``.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        image_size: int = 320,
        backbone: str = "mobilenet_v3_small",
        channels: int = 64,
        head_depth: int = 2,
        center_radius: float = 1.5,  # in strides
    ) -> None:
        super().__init__()
        if backbone not in ("mobilenet_v3_small", "mobilenet_v3_large"):
            raise ZooError(f"backbone must be mobilenet_v3_small or mobilenet_v3_large, got {backbone!r}")
        if image_size % 32:
            raise ZooError(f"fcos_mnv3 image_size must be a multiple of 32, got {image_size}")
        self.num_classes = num_classes
        self.image_size = image_size
        self.center_radius = center_radius
        self.stride = 8
        self.features = torchvision.models.get_model(backbone, weights=None).features
        self.taps, tap_channels = self._find_taps()
        self.lateral = nn.ModuleList([nn.Conv2d(c, channels, 1) for c in tap_channels])
        self.smooth = _conv_bn(channels, channels)
        self.head = _Head(channels, num_classes, head_depth)
        self.scale = nn.Parameter(torch.ones(1))

    def _find_taps(self) -> tuple[list[int], list[int]]:
        """Indices of the last feature block at strides 8, 16, 32 and their channel counts."""
        last: dict[int, tuple[int, int]] = {}
        x = torch.zeros(1, 3, 64, 64)
        with torch.no_grad():
            for i, block in enumerate(self.features):
                x = block(x)
                stride = 64 // x.shape[-1]
                if stride in (8, 16, 32):
                    last[stride] = (i, x.shape[1])
        return [last[s][0] for s in (8, 16, 32)], [last[s][1] for s in (8, 16, 32)]

    def _fpn(self, x: Tensor) -> Tensor:
        feats = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.taps:
                feats.append(x)
            if i == self.taps[-1]:
                break
        p = self.lateral[2](feats[2])
        for level in (1, 0):
            lat = self.lateral[level](feats[level])
            p = lat + F.interpolate(p, size=lat.shape[-2:], mode="nearest")
        out: Tensor = self.smooth(p)
        return out

    def _locations(self, h: int, w: int, device: torch.device) -> Tensor:
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * self.stride
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * self.stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)  # [A, 2]

    def _raw(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        cls, reg, ctr = self.head(self._fpn(images))
        n, c, h, w = cls.shape
        cls = cls.permute(0, 2, 3, 1).reshape(n, h * w, c)
        dist = torch.exp((reg * self.scale).clamp(max=8.0)).permute(0, 2, 3, 1).reshape(n, h * w, 4)
        ctr = ctr.permute(0, 2, 3, 1).reshape(n, h * w)
        return cls, dist * self.stride, ctr, self._locations(h, w, images.device)

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[Tensor, Tensor] | dict[str, Tensor]:
        cls, dist, ctr, loc = self._raw(images)
        if self.training:
            if targets is None:
                raise ZooError("fcos_mnv3 in train mode needs targets (list of {'boxes', 'labels'})")
            return self._loss(cls, dist, ctr, loc, targets)
        boxes = torch.cat([loc - dist[..., :2], loc + dist[..., 2:]], dim=-1)
        scores = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr).unsqueeze(-1))
        return boxes, scores

    def _assign(self, loc: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """Index of the gt box each location regresses (-1: background), and ltrb targets."""
        if boxes.numel() == 0:
            return torch.full((loc.shape[0],), -1, dtype=torch.long, device=loc.device), loc.new_zeros(loc.shape[0], 4)
        x, y = loc[:, 0:1], loc[:, 1:2]
        ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], -1)  # [A,K,4]
        inside = ltrb.min(-1).values > 0
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        r = self.center_radius * self.stride
        near = ((x - cx).abs() < r) & ((y - cy).abs() < r)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).expand_as(inside)
        area = torch.where(inside & near, area, torch.full_like(area, float("inf")))
        best_area, best = area.min(1)
        best[torch.isinf(best_area)] = -1
        target = ltrb[torch.arange(loc.shape[0], device=loc.device), best.clamp(min=0)]
        return best, target

    def _loss(
        self, cls: Tensor, dist: Tensor, ctr: Tensor, loc: Tensor, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        cls_t = torch.zeros_like(cls)
        pos_list, ltrb_list = [], []
        for i, t in enumerate(targets):
            idx, ltrb = self._assign(loc, t["boxes"].to(loc))
            pos = idx >= 0
            cls_t[i, pos, t["labels"].to(cls.device)[idx[pos]]] = 1.0
            pos_list.append(pos)
            ltrb_list.append(ltrb)
        pos = torch.stack(pos_list)
        ltrb_t = torch.stack(ltrb_list)[pos]
        num_pos = max(float(pos.sum()), 1.0)
        loss_cls = sigmoid_focal_loss(cls, cls_t, reduction="sum") / num_pos
        if ltrb_t.numel() == 0:
            zero = dist.sum() * 0.0 + ctr.sum() * 0.0
            return {"loss_cls": loss_cls, "loss_box": zero, "loss_ctr": zero}
        lr, tb = ltrb_t[:, [0, 2]], ltrb_t[:, [1, 3]]
        ctr_t = torch.sqrt((lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values))
        p = dist[pos]
        lp = loc.unsqueeze(0).expand(pos.shape[0], -1, -1)[pos]
        pred_boxes = torch.cat([lp - p[:, :2], lp + p[:, 2:]], 1)
        gt_boxes = torch.cat([lp - ltrb_t[:, :2], lp + ltrb_t[:, 2:]], 1)
        giou = generalized_box_iou_loss(pred_boxes, gt_boxes, reduction="none")
        loss_box = (giou * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
        loss_ctr = F.binary_cross_entropy_with_logits(ctr[pos], ctr_t, reduction="sum") / num_pos
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr}
