"""Segmentation metrics per class: Dice and the 95th-percentile Hausdorff distance (HD95), through MONAI.

Both are computed per slice (2D) and per foreground class (label 1 .. K-1; label 0 is left out) with
``monai.metrics.compute_dice`` and ``compute_hausdorff_distance(percentile=95)``, in pixels. Following
MONAI, a class absent from the ground truth of a slice gives no value for that slice (NaN, skipped in the
mean); HD95 is also undefined, and skipped, where the prediction misses a present class entirely, which
Dice (0 there) already penalises.
"""

from __future__ import annotations

import warnings

import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot
from torch import Tensor
from torchmetrics import Metric

from medmtl.errors import InputError


def _one_hot(labels: Tensor, num_classes: int) -> Tensor:
    return one_hot(labels[:, None].long(), num_classes, dim=1)


def dice_hd95(pred: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-slice, per-foreground-class Dice and HD95.

    Args:
        pred, target: (B, H, W) integer label maps in 0 .. num_classes - 1.
        num_classes: K, background included.

    Returns:
        dice (B, K - 1) and hd95 (B, K - 1) float32 (pixels), NaN where undefined (see the module docstring).
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise InputError(
            "seg metrics", f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must be (B, H, W)"
        )
    if num_classes < 2:
        raise InputError("seg metrics", f"num_classes must be >= 2, got {num_classes}")
    p = _one_hot(pred.detach(), num_classes)
    t = _one_hot(target.detach(), num_classes)
    dice = compute_dice(p, t, include_background=False)
    present = t[:, 1:].flatten(2).any(dim=2) & p[:, 1:].flatten(2).any(dim=2)
    with warnings.catch_warnings():
        # MONAI warns for every empty class and about a deprecated argument it passes itself.
        warnings.simplefilter("ignore")
        hd95 = compute_hausdorff_distance(p, t, include_background=False, percentile=95)
    hd95 = torch.where(present, hd95.to(dice.device), torch.nan)
    return dice.float(), hd95.float()


class SegMetrics(Metric):
    """Mean Dice and HD95 of each foreground class over every slice where they are defined.

    ``update(pred (B, H, W), target (B, H, W))`` with integer labels;
    ``compute() -> {"dice_<class>": ..., "hd95_<class>": ..., "dice_mean": ...}`` (float64 scalars; NaN for a
    class never present). ``class_names`` has K entries, background first.
    """

    full_state_update = False

    def __init__(self, class_names: tuple[str, ...] | list[str], **kwargs):
        super().__init__(**kwargs)
        self.class_names = tuple(class_names)
        k = len(self.class_names) - 1
        for name in ("dice", "hd95"):
            self.add_state(f"{name}_sum", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{name}_count", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        dice, hd95 = dice_hd95(pred, target, len(self.class_names))
        for name, values in (("dice", dice), ("hd95", hd95)):
            values = values.to(self.dice_sum.device, torch.float64)
            finite = torch.isfinite(values)
            setattr(self, f"{name}_sum", getattr(self, f"{name}_sum") + torch.where(finite, values, 0).sum(0))
            setattr(self, f"{name}_count", getattr(self, f"{name}_count") + finite.sum(0))

    def compute(self) -> dict[str, Tensor]:
        out = {}
        for name in ("dice", "hd95"):
            means = getattr(self, f"{name}_sum") / getattr(self, f"{name}_count")
            out.update({f"{name}_{cls}": m for cls, m in zip(self.class_names[1:], means)})
        out["dice_mean"] = (self.dice_sum / self.dice_count).nanmean()
        return out
