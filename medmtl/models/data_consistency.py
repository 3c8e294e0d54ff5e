"""The forward model A = M F S and the two data-consistency steps of the unrolled network.

Images are coil-combined (B, H, W, 2); k-space is (B, C, H, W, 2); masks (B, 1, Hm, W, 1) with Hm = 1
(1D) or H (2D) broadcast over coils, rows and the pair. With coil maps normalised so that
sum_c |S_c|^2 = 1 and the orthonormal FFT, ||A|| <= 1, so a gradient step of 1 is stable.
"""

from __future__ import annotations

import torch
from torch import nn

from medmtl.cplx import sense_expand, sense_reduce
from medmtl.fft import fft2c, ifft2c


def forward_op(image: torch.Tensor, sens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A x = M F S x. image (B, H, W, 2), sens (B, C, H, W, 2), mask (B, 1, Hm, W, 1) -> (B, C, H, W, 2)."""
    return mask * fft2c(sense_expand(image, sens))


def adjoint_op(kspace: torch.Tensor, sens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A^H k = S^H F^H M k. kspace (B, C, H, W, 2) -> (B, H, W, 2)."""
    return sense_reduce(ifft2c(mask * kspace), sens)


class SoftDC(nn.Module):
    """Soft data consistency: where sampled, blend the image's k-space towards the measurement.

    k' = (1 - w M) F S x + w M y, then back to the image with S^H F^H. The learned weight ``w`` starts at 1,
    where sampled k-space becomes exactly the measurement (0 * k + 1 * y has no rounding).
    """

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def blend(self, kspace: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W, 2) coil k-space and measurement, (B, 1, Hm, W, 1) mask -> blended (B, C, H, W, 2)."""
        wm = self.weight * mask
        return (1 - wm) * kspace + wm * measured

    def forward(
        self, image: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor, sens: torch.Tensor
    ) -> torch.Tensor:
        """image (B, H, W, 2) -> data-consistent image (B, H, W, 2)."""
        kspace = fft2c(sense_expand(image, sens))
        return sense_reduce(ifft2c(self.blend(kspace, measured, mask)), sens)


class GradientDC(nn.Module):
    """One gradient step on ||A x - y||^2 / 2 with a learned step size ``step`` (starts at 1).

    ``forward`` returns the step's update, step * A^H (A x - y), for the caller to subtract.
    """

    def __init__(self):
        super().__init__()
        self.step = nn.Parameter(torch.ones(()))

    def forward(
        self, image: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor, sens: torch.Tensor
    ) -> torch.Tensor:
        """image (B, H, W, 2), measured (B, C, H, W, 2) zero off the mask -> update (B, H, W, 2)."""
        residual = forward_op(image, sens, mask) - measured
        return self.step * sense_reduce(ifft2c(residual), sens)
