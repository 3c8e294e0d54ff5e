"""Coil sensitivities: the ACS estimate, refined by a small complex U-Net run per coil at low resolution.

1. ACS coil images c = ifft2c(ACS-masked k-space), and the classical estimate
   s0 = c / sqrt(sum |c|^2 + eps^2), eps = ``DEFAULT_REGULARIZATION`` * max RSS (as the "lowres" method of
   ``medmtl.transforms.coils``, without its window: the averaging of step 2 smooths instead).
2. Coils go into the batch, so any coil count works; each map is averaged down by ``downsample`` in both
   axes, refined there residually (s = s0 + U(s0), the U-Net's head starts at zero) and bilinearly
   upsampled. Coil maps are smooth, and at 1/4 resolution the refiner costs 1/16 of a full-resolution one:
   for 8 coils it would otherwise cost as much as eight regulariser passes.
3. s / sqrt(sum_c |s_c|^2), so that sum_c |S_c|^2 = 1 at every pixel.

The ACS region is an input, found outside the graph (``medmtl.transforms.acs``), so nothing here depends on
tensor values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.cplx import complex_abs_sq
from medmtl.fft import ifft2c
from medmtl.models.complex_unet import complex_avg_pool, complex_unet
from medmtl.models.unet import crop_to, pad_to_multiple
from medmtl.transforms.coils import DEFAULT_REGULARIZATION

# Keeps 1 / sqrt(sum |s|^2) finite where every coil's map is exactly zero (zero padding, an all-zero input).
_TINY = 1e-12


def _unit_norm(maps: torch.Tensor, eps_sq: torch.Tensor | float) -> torch.Tensor:
    """(B, C, H, W, 2) -> maps / sqrt(sum_c |maps|^2 + eps_sq)."""
    return maps * torch.rsqrt(complex_abs_sq(maps).sum(dim=1, keepdim=True) + eps_sq).unsqueeze(-1)


def _upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, 1, h, w, 2) -> (N, 1, h * factor, w * factor, 2), bilinear on both parts."""
    y = F.interpolate(x[:, 0].permute(0, 3, 1, 2), scale_factor=factor, mode="bilinear", align_corners=False)
    return y.permute(0, 2, 3, 1).unsqueeze(1)


class SensitivityNet(nn.Module):
    """Args:
    chans: complex channels of the refiner's first level.
    pools: its downsamplings.
    downsample: the factor by which maps are averaged before refinement (1 refines at full resolution).
    """

    def __init__(self, chans: int = 8, pools: int = 3, downsample: int = 4):
        super().__init__()
        self.downsample = downsample
        self.refiner = complex_unet(1, 1, chans, pools)

    def forward(self, kspace: torch.Tensor, acs_mask: torch.Tensor) -> torch.Tensor:
        """kspace (B, C, H, W, 2), acs_mask (B, 1, Hm, W, 1) -> maps (B, C, H, W, 2), sum_c |S_c|^2 = 1."""
        b, c, h, w, _ = kspace.shape
        coil_images = ifft2c(kspace * acs_mask)
        power = complex_abs_sq(coil_images).sum(dim=1, keepdim=True)  # (B, 1, H, W)
        eps_sq = (DEFAULT_REGULARIZATION**2) * power.amax(dim=(2, 3), keepdim=True)
        estimate = _unit_norm(coil_images, eps_sq).reshape(b * c, 1, h, w, 2)
        low = complex_avg_pool(pad_to_multiple(estimate, self.downsample), self.downsample)
        low = low + self.refiner(low)
        maps = crop_to(_upsample(low, self.downsample), h, w).reshape(b, c, h, w, 2)
        return _unit_norm(maps, _TINY)
