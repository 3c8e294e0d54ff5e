"""Structural similarity (Wang et al. 2004) for 2D and 3D images: metric, loss and their modules.

Conventions (those of skimage's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)``, torchmetrics, pytorch-msssim and MONAI): a separable window (an
11-tap Gaussian of sigma 1.5 by default) over each channel, population variances, C1 = (0.01 L)^2 and
C2 = (0.03 L)^2 for the data range L, and the mean over the "valid" region only (skimage crops
(K - 1) / 2 pixels from each border, which is the same set). The value is the mean over batch,
channels and pixels.

A ``mask`` (bool or float, broadcastable to the input) restricts and weights the mean: each SSIM-map
pixel counts with the mask value at its window centre. Pixels the mask leaves out still feed their
neighbours' windows, as they would in an unmasked image. If nothing is left, the SSIM is 0 (loss 1)
with zero gradient.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from medmtl.errors import InputError
from medmtl.losses import _ssim_op
from medmtl.losses._ssim_torch import crop_valid
from medmtl.losses._window import KERNEL, KERNEL_SIZE, SIGMA, ssim_constants, window_weights
from medmtl.losses.dispatch import use_triton

REDUCTIONS = ("mean", "none")


def check_pair(pred: torch.Tensor, target: torch.Tensor, kernel_size: int, where: str) -> None:
    """Raise InputError unless pred and target are same-shape floating (B, C, H, W) or (B, C, D, H, W)
    tensors on one device with every spatial size at least kernel_size."""
    if not (isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor)):
        raise InputError(where, "pred and target must be tensors")
    if pred.shape != target.shape:
        raise InputError(where, f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.dim() not in (4, 5):
        raise InputError(where, f"expected (B, C, H, W) or (B, C, D, H, W), got shape {tuple(pred.shape)}")
    if not (pred.is_floating_point() and target.is_floating_point()):
        raise InputError(where, f"pred and target must be floating point, got {pred.dtype} and {target.dtype}")
    if pred.device != target.device:
        raise InputError(where, f"pred is on {pred.device} but target is on {target.device}")
    if min(pred.shape[2:]) < kernel_size:
        raise InputError(
            where, f"every spatial size must be >= kernel_size {kernel_size}, got {tuple(pred.shape[2:])}"
        )


def _flat_mask(mask: torch.Tensor | None, pred: torch.Tensor, where: str) -> torch.Tensor | None:
    """The mask broadcast to pred's shape, as (B * C, *S) in pred's dtype."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise InputError(where, "mask must be a tensor")
    try:
        shape = torch.broadcast_shapes(mask.shape, pred.shape)
    except RuntimeError:
        shape = None
    if shape != pred.shape:
        raise InputError(where, f"mask {tuple(mask.shape)} does not broadcast to the input {tuple(pred.shape)}")
    return mask.to(device=pred.device, dtype=pred.dtype).expand(pred.shape).reshape(-1, *pred.shape[2:])


def ssim_per_image(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float,
    window: list[float],
    mask: torch.Tensor | None,
    backend: str | None,
    where: str,
    cs_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
    """Weighted sums of the SSIM and CS maps, each (B, C), and their weight: (B, C), or the number of
    valid pixels per image when there is no mask.

    The building block of ``ssim`` and ``ms_ssim``; inputs are assumed checked by ``check_pair``.
    ``cs_grad=False`` returns the CS sums detached (``ssim`` drops them), which lets the eager Triton route
    do the backward in one kernel.
    """
    c1, c2 = ssim_constants(data_range, where)
    b, c = pred.shape[:2]
    target = target.to(pred.dtype)  # one dtype for the op (its sums follow pred's)
    flat = _flat_mask(mask, pred, where)
    sums = _ssim_op.sums(
        pred.reshape(b * c, *pred.shape[2:]),
        target.reshape(b * c, *pred.shape[2:]),
        flat,
        window,
        c1,
        c2,
        use_triton(backend, pred, "ssim"),
        cs_grad,
    ).view(b, c, 2)
    k = len(window)
    # With cs_grad=False the CS sums come back detached: their gradient would not be computed.
    cs = sums[..., 1] if cs_grad else sums[..., 1].detach()
    if flat is None:
        # Every pixel weighs 1: the weight is the valid-region size, a number (no tensor work).
        return sums[..., 0], cs, float(math.prod([s - k + 1 for s in pred.shape[2:]]))
    weight = crop_valid(flat, k).flatten(1).sum(1).to(sums.dtype).view(b, c)
    return sums[..., 0], cs, weight


def weighted_mean(total: torch.Tensor, weight: torch.Tensor | float, reduction: str, where: str) -> torch.Tensor:
    """sum(total) / sum(weight) (``mean``) or total / weight (``none``); a number ``weight`` is every
    image's. A zero weight means a zero total (every term was weighted by 0): dividing by 1 there
    gives 0 with a finite, zero gradient."""
    if reduction not in REDUCTIONS:
        raise InputError(where, f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(weight, torch.Tensor):
        return total.sum() / (weight * total.numel()) if reduction == "mean" else total / weight
    if reduction == "mean":
        total, weight = total.sum(), weight.sum()
    return total / torch.where(weight > 0, weight, 1)


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float,
    kernel: str = KERNEL,
    kernel_size: int = KERNEL_SIZE,
    sigma: float = SIGMA,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """Mean SSIM of pred against target.

    Args:
        pred, target: (B, C, H, W) or (B, C, D, H, W), the same shape; intensities in the units of
            ``data_range``.
        data_range: L, the intensity range (1 for images in [0, 1], 255 for 8-bit).
        kernel: ``gaussian`` or ``uniform`` window, ``kernel_size`` taps (odd) per axis; ``sigma`` in
            pixels for the Gaussian.
        mask: bool or float weights broadcastable to pred (e.g. (B, 1, H, W) foreground).
        reduction: ``mean`` (a scalar) or ``none`` ((B, C), one value per image and channel).
        backend: ``auto``, ``torch`` or ``triton`` (see ``medmtl.losses.dispatch``).

    Returns:
        SSIM in [-1, 1]: a scalar or (B, C), float32 (float64 for float64 inputs).
    """
    window = window_weights(kernel, kernel_size, sigma, "ssim")
    check_pair(pred, target, kernel_size, "ssim")
    total, _, weight = ssim_per_image(pred, target, data_range, window, mask, backend, "ssim", cs_grad=False)
    return weighted_mean(total, weight, reduction, "ssim")


def ssim_loss(
    pred: torch.Tensor, target: torch.Tensor, data_range: float, **options: object
) -> torch.Tensor:
    """1 - ``ssim(pred, target, data_range, **options)``; the options are ``ssim``'s keywords."""
    return 1 - ssim(pred, target, data_range, **options)


def bind_options(fn, options: dict) -> dict:
    """Check keyword options against ``fn``'s signature now (a module's construction), not at the
    first forward; returns them unchanged."""
    params = inspect.signature(fn).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise TypeError(f"{fn.__name__}() got unexpected options {unknown}")
    return options


class SSIM(nn.Module):
    """Module twin of ``ssim``: ``SSIM(data_range, **options)(pred, target, mask=None)``."""

    def __init__(self, data_range: float, **options: object):
        super().__init__()
        self.data_range = data_range
        self.options = bind_options(ssim, options)
        ssim_constants(data_range, "SSIM")

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return ssim(pred, target, self.data_range, mask=mask, **self.options)


class SSIMLoss(SSIM):
    """Module twin of ``ssim_loss``: 1 - SSIM."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return 1 - super().forward(pred, target, mask)
