"""Reconstruction metrics per slice, as the acceptance criteria of issue 3 define them.

SSIM is scikit-image's ``structural_similarity`` with its defaults: a 7 x 7 uniform window, K1 = 0.01,
K2 = 0.03, the sample (N - 1) covariance, and the mean of the SSIM map over the pixels whose whole window lies
inside the slice (skimage filters with reflection and then crops those borders, which leaves exactly the
"valid" region computed here). ``data_range`` is the target's maximum, per slice; PSNR uses the same range.
NMSE is ||pred - target||^2 / ||target||^2.

This is the *metric*; the training losses live in ``medmtl.losses`` (Gaussian window, differentiable, fast).
A slice whose target is all zero has no data range: its SSIM and PSNR are NaN, and ``ReconMetrics`` skips
them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from medmtl.errors import InputError

WIN_SIZE = 7
K1, K2 = 0.01, 0.03
NAMES = ("ssim", "psnr", "nmse")


def _check(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if pred.shape != target.shape or pred.ndim != 3:
        raise InputError(
            "recon metrics", f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must be (B, H, W)"
        )
    if min(pred.shape[-2:]) < WIN_SIZE:
        raise InputError(
            "ssim", f"slices of {tuple(pred.shape[-2:])} are smaller than the {WIN_SIZE}x{WIN_SIZE} window"
        )
    # float64: the metric must agree with skimage (which works in float64) to well below reporting precision
    return pred.detach().double(), target.detach().double()


def data_range(target: Tensor) -> Tensor:
    """The per-slice data range, the target's maximum. (B, H, W) -> (B,)."""
    return target.flatten(1).amax(dim=1)


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """skimage-equivalent SSIM of each slice. (B, H, W) twice -> (B,) float64."""
    x, y = _check(pred, target)
    rng = data_range(y)[:, None, None, None]
    c1, c2 = (K1 * rng) ** 2, (K2 * rng) ** 2
    stack = torch.stack([x, y, x * x, y * y, x * y], dim=1)  # (B, 5, H, W)
    ux, uy, uxx, uyy, uxy = F.avg_pool2d(stack, WIN_SIZE, stride=1).unbind(1)
    ux, uy, uxx, uyy, uxy = (t[:, None] for t in (ux, uy, uxx, uyy, uxy))
    cov_norm = WIN_SIZE**2 / (WIN_SIZE**2 - 1)  # skimage's use_sample_covariance=True
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    value = (num / den).flatten(1).mean(dim=1)
    return torch.where(rng.flatten() > 0, value, torch.nan)


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """PSNR in dB with the target's maximum as the data range. (B, H, W) twice -> (B,) float64."""
    x, y = _check(pred, target)
    mse = (x - y).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range(y).square() / mse)


def nmse(pred: Tensor, target: Tensor) -> Tensor:
    """||pred - target||^2 / ||target||^2 per slice. (B, H, W) twice -> (B,) float64."""
    x, y = _check(pred, target)
    return (x - y).square().flatten(1).sum(dim=1) / y.square().flatten(1).sum(dim=1)


class ReconMetrics(Metric):
    """Mean SSIM, PSNR and NMSE over every slice seen (slices with a non-finite value are skipped per metric).

    ``update(pred (B, H, W), target (B, H, W))``; ``compute() -> {"ssim", "psnr", "nmse"}`` as float64
    scalars. States are sums and counts, so the means are exact across batches and ranks.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in NAMES:
            self.add_state(f"{name}_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{name}_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        for name, fn in zip(NAMES, (ssim, psnr, nmse)):
            values = fn(pred, target)
            finite = torch.isfinite(values)
            setattr(self, f"{name}_sum", getattr(self, f"{name}_sum") + values[finite].sum())
            setattr(self, f"{name}_count", getattr(self, f"{name}_count") + finite.sum())

    def compute(self) -> dict[str, Tensor]:
        return {name: getattr(self, f"{name}_sum") / getattr(self, f"{name}_count") for name in NAMES}
