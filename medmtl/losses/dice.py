"""Soft Dice and Dice + cross-entropy losses, matching MONAI's ``DiceLoss`` / ``DiceCELoss``.

``logits`` are (B, C, *spatial). ``target`` is either labels, (B, 1, *spatial) or (B, *spatial) with
values in [0, C) (MONAI's ``to_onehot_y=True``), or dense one-hot / probabilities (B, C, *spatial).
With C = 1 a (B, 1, *spatial) target is the dense binary target.

For each image and class (or each class, with ``batch=True``): I = sum w p t, P = sum w p^q,
T = sum w t^q (q = 2 with ``squared_pred``) and the loss 1 - (2 I + smooth_nr) / (P + T + smooth_dr),
or 1 - (2 I + smooth_nr) / (2 (P + T - I) + smooth_dr) with ``jaccard``; p = softmax or sigmoid of the
logits (``activation``), w the optional voxel ``mask`` (bool or float, broadcastable to
(B, 1, *spatial)). ``class_weight`` (C,) scales each class's loss when more than one class is scored
(as MONAI), weights the cross-entropy's classes, and is BCE's pos_weight with sigmoid.
``empty="ignore"`` leaves classes absent from the target (T = 0) out of the mean; ``"include"`` keeps
them, as MONAI does, where the smoothing terms decide their value.

Cross-entropy: softmax -> categorical CE (weighted mean, as torch's ``CrossEntropyLoss``); sigmoid ->
per-class binary CE (mean over voxels and classes). MONAI uses BCE only for C = 1 and softmax CE
otherwise, even with sigmoid; for C > 1 with sigmoid this module's BCE is the multi-label choice.
"""

from __future__ import annotations

import torch
from torch import nn

from medmtl.errors import InputError
from medmtl.losses import _dice_op
from medmtl.losses._dice_torch import ACTIVATIONS
from medmtl.losses.dispatch import use_triton
from medmtl.losses.ssim import bind_options

EMPTY_POLICIES = ("include", "ignore")
REDUCTIONS = ("mean", "sum", "none")


def _flatten(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, where: str):
    """(B, C, V) logits, (B, V) labels or (B, C, V) dense targets, (B, V) weights or None."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() < 3:
        raise InputError(where, "logits must be a floating tensor (B, C, *spatial)")
    b, c, spatial = logits.shape[0], logits.shape[1], logits.shape[2:]
    if not isinstance(target, torch.Tensor) or target.device != logits.device:
        raise InputError(where, f"target must be a tensor on {logits.device}")
    if target.shape == logits.shape:
        flat_target = target.reshape(b, c, -1)
    elif target.shape in ((b, 1, *spatial), (b, *spatial)):
        flat_target = target.reshape(b, -1)
    else:
        raise InputError(
            where,
            f"target {tuple(target.shape)} must be labels (B, 1, *spatial) or (B, *spatial), or dense "
            f"(B, C, *spatial), for logits {tuple(logits.shape)}",
        )
    if mask is None:
        return logits.reshape(b, c, -1), flat_target, None
    try:
        ok = torch.broadcast_shapes(mask.shape, (b, 1, *spatial)) == (b, 1, *spatial)
    except RuntimeError:
        ok = False
    if not ok:
        raise InputError(where, f"mask {tuple(mask.shape)} does not broadcast to (B, 1, *spatial) = {(b, 1, *spatial)}")
    weight = mask.to(device=logits.device, dtype=logits.dtype).expand(b, 1, *spatial).reshape(b, -1)
    return logits.reshape(b, c, -1), flat_target, weight


def _class_weight(class_weight, logits: torch.Tensor, where: str) -> torch.Tensor | None:
    if class_weight is None:
        return None
    cw = torch.as_tensor(class_weight, dtype=logits.dtype, device=logits.device).flatten()
    if cw.numel() != logits.shape[1]:
        raise InputError(where, f"class_weight needs one value per class ({logits.shape[1]}), got {cw.numel()}")
    return cw


def _stats(logits, target, activation, squared, with_ce, class_weight, mask, backend, where):
    """(sums (B, C, 3), ce (B, 2), class weights (C,) or None) from the fused op."""
    if activation not in ACTIVATIONS:
        raise InputError(where, f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    z, t, w = _flatten(logits, target, mask, where)
    if activation == "softmax" and z.shape[1] < 2:
        raise InputError(where, "softmax needs at least 2 channels; use activation='sigmoid' for one")
    if activation == "sigmoid" and t.dim() == 2 and z.shape[1] > 1:
        raise InputError(where, "sigmoid (multi-label) needs dense targets (B, C, *spatial), not labels")
    cw = _class_weight(class_weight, logits, where)
    sums, ce = _dice_op.sums(z, t, w, cw, activation, squared, with_ce, use_triton(backend, logits, "dice"))
    return sums, ce, cw


def _dice(sums, cw, include_background, jaccard, smooth_nr, smooth_dr, batch, empty, reduction, where):
    """Dice loss from the sums, reduced: MONAI's formula plus the empty-class policy."""
    if empty not in EMPTY_POLICIES:
        raise InputError(where, f"empty must be one of {EMPTY_POLICIES}, got {empty!r}")
    if reduction not in REDUCTIONS:
        raise InputError(where, f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not include_background and sums.shape[1] > 1:
        sums = sums[:, 1:]
        cw = cw[1:] if cw is not None else None
    if batch:
        sums = sums.sum(0, keepdim=True)
    i, p, t = sums.unbind(-1)
    denominator = 2 * (p + t - i) if jaccard else p + t
    f = 1 - (2 * i + smooth_nr) / (denominator + smooth_dr)
    if cw is not None and f.shape[1] > 1:  # as MONAI: a lone class's Dice is not weighted
        f = f * cw.to(f.dtype)
    if empty == "ignore":
        present = (t > 0).to(f.dtype)
        f = f * present
        if reduction == "mean":
            return f.sum() / present.sum().clamp_min(1)
    if reduction == "none":
        return f
    return f.mean() if reduction == "mean" else f.sum()


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    activation: str = "softmax",
    include_background: bool = True,
    squared_pred: bool = False,
    jaccard: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
    class_weight: torch.Tensor | list[float] | None = None,
    empty: str = "include",
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """Soft Dice loss (see the module docstring); ``activation`` is softmax, sigmoid or none
    (probabilities given). Returns a scalar (``mean``, ``sum``) or (B, C') per image and class
    (``none``; (1, C') with ``batch``; C' = C - 1 without background). With ``empty="ignore"`` the
    ignored entries are 0 in ``sum`` and ``none``."""
    sums, _, cw = _stats(logits, target, activation, squared_pred, False, class_weight, mask, backend, "dice_loss")
    return _dice(sums, cw, include_background, jaccard, smooth_nr, smooth_dr, batch, empty, reduction, "dice_loss")


def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    activation: str = "softmax",
    include_background: bool = True,
    squared_pred: bool = False,
    jaccard: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
    class_weight: torch.Tensor | list[float] | None = None,
    empty: str = "include",
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    backend: str | None = None,
) -> torch.Tensor:
    """lambda_dice * Dice + lambda_ce * cross-entropy, from one fused pass over the logits; options
    as for ``dice_loss`` (``activation`` softmax or sigmoid; ``reduction`` mean or sum). The mask
    weights the cross-entropy's voxels too. Returns a scalar."""
    where = "dice_ce_loss"
    if activation == "none":
        raise InputError(where, "cross-entropy needs logits: activation must be 'softmax' or 'sigmoid'")
    if reduction not in ("mean", "sum"):
        raise InputError(where, f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if lambda_dice < 0 or lambda_ce < 0:
        raise InputError(where, f"lambda_dice and lambda_ce must be >= 0, got {lambda_dice} and {lambda_ce}")
    sums, ce, cw = _stats(logits, target, activation, squared_pred, True, class_weight, mask, backend, where)
    dice = _dice(sums, cw, include_background, jaccard, smooth_nr, smooth_dr, batch, empty, reduction, where)
    numerator = ce[:, 0].sum()
    if reduction == "mean":
        denominator = ce[:, 1].sum()
        numerator = numerator / torch.where(denominator > 0, denominator, 1)  # all-zero weights: 0
    return lambda_dice * dice + lambda_ce * numerator


class _DiceModule(nn.Module):
    """A loss function and its keyword options; class weights become a buffer, so that they follow
    the module's ``.to(device)`` instead of being copied to the device at every call. Subclasses set
    ``loss``."""

    def __init__(self, **options: object):
        super().__init__()
        self.options = dict(bind_options(self.loss, options))
        weight = self.options.pop("class_weight", None)
        weight = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        self.register_buffer("class_weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss(logits, target, mask=mask, class_weight=self.class_weight, **self.options)


class DiceLoss(_DiceModule):
    """Module twin of ``dice_loss``: ``DiceLoss(**options)(logits, target, mask=None)``."""

    loss = staticmethod(dice_loss)


class DiceCELoss(_DiceModule):
    """Module twin of ``dice_ce_loss``: ``DiceCELoss(**options)(logits, target, mask=None)``."""

    loss = staticmethod(dice_ce_loss)
