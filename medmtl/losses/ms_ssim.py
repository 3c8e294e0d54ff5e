"""Multi-scale SSIM (Wang, Simoncelli and Bovik 2003) for 2D images, as pytorch-msssim computes it.

At each of the len(weights) scales the per-image contrast-structure mean CS_j is taken (SSIM itself at
the last scale); between scales x and y are 2x2 average-pooled (padding odd sizes by one, zeros
counted, as pytorch-msssim does). MS-SSIM = prod_j relu(CS_j)^w_j * relu(SSIM_last)^w_last per image
and channel, then the mean. A mask is pooled alongside and weights each scale as in ``ssim``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import InputError
from medmtl.losses._window import KERNEL, KERNEL_SIZE, SIGMA, window_weights
from medmtl.losses.ssim import bind_options, check_pair, ssim_per_image, weighted_mean

MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _pool(t: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(t, kernel_size=2, padding=[s % 2 for s in t.shape[2:]])


def ms_ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float,
    kernel: str = KERNEL,
    kernel_size: int = KERNEL_SIZE,
    sigma: float = SIGMA,
    weights: tuple[float, ...] = MS_WEIGHTS,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """MS-SSIM of (B, C, H, W) pred against target; arguments as for ``ssim`` plus the per-scale
    ``weights`` (their number is the number of scales). The smallest scale, about H / 2^(scales - 1),
    must still be at least kernel_size. Returns a scalar (``mean``) or (B, C) (``none``)."""
    window = window_weights(kernel, kernel_size, sigma, "ms_ssim")
    check_pair(pred, target, kernel_size, "ms_ssim")
    if pred.dim() != 4:
        raise InputError("ms_ssim", f"expected 2D images (B, C, H, W), got shape {tuple(pred.shape)}")
    if len(weights) < 1:
        raise InputError("ms_ssim", "weights must name at least one scale")
    smallest = [s for s in pred.shape[2:]]
    for _ in weights[1:]:
        smallest = [(s + s % 2) // 2 for s in smallest]
    if min(smallest) < kernel_size:
        raise InputError(
            "ms_ssim",
            f"{len(weights)} scales shrink {tuple(pred.shape[2:])} to {tuple(smallest)}, below kernel_size "
            f"{kernel_size}; use larger images or fewer weights",
        )
    if reduction not in ("mean", "none"):
        raise InputError("ms_ssim", f"reduction must be 'mean' or 'none', got {reduction!r}")
    if mask is not None:
        mask = mask.to(device=pred.device, dtype=pred.dtype).expand(pred.shape)
    factors = []
    for level, w in enumerate(weights):
        if level > 0:
            pred, target = _pool(pred), _pool(target)
            mask = _pool(mask) if mask is not None else None
        total_s, total_cs, weight = ssim_per_image(pred, target, data_range, window, mask, backend, "ms_ssim")
        last = level == len(weights) - 1
        value = weighted_mean(total_s if last else total_cs, weight, "none", "ms_ssim")
        factors.append(torch.relu(value) ** w)
    value = torch.stack(factors).prod(0)
    return value.mean() if reduction == "mean" else value


class MSSSIM(nn.Module):
    """Module twin of ``ms_ssim``: ``MSSSIM(data_range, **options)(pred, target, mask=None)``."""

    def __init__(self, data_range: float, **options: object):
        super().__init__()
        self.data_range = data_range
        self.options = bind_options(ms_ssim, options)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return ms_ssim(pred, target, self.data_range, mask=mask, **self.options)
