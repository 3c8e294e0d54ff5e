"""The forward model A = M F S and the two data-consistency steps of the unrolled network.

Images are coil-combined (B, H, W, 2); k-space is (B, C, H, W, 2); masks (B, 1, Hm, W, 1) with Hm = 1
(1D) or H (2D) broadcast over coils, rows and the pair. With coil maps normalised so that
sum_c |S_c|^2 = 1 and the orthonormal FFT, ||A|| <= 1, so a gradient step of 1 is stable.

Exported graphs (``torch.export``, ONNX) compute the same steps another way, because their Fourier transforms
are dense products with DFT matrices (``medmtl.fft``), N / log2 N times the work of an FFT. Both steps need
the coil images' masked round trip F^H M F and the data's image F^H (M) y, which does not change between
cascades: ``ExportTerms`` holds it, computed once. When the mask is the same in every row (Cartesian lines,
the usual case), F^H M F is one W x W product per coil image (``medmtl.fft.line_projection_matrix``) instead
of two 2D transforms, four times less work; a mask that varies along H takes the 2D transforms. The choice is
made at run time on the mask (``torch.cond``, an ONNX ``If``), so one graph serves both.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from medmtl.cplx import sense_expand, sense_reduce
from medmtl.fft import complex_matmul_right, fft2c, ifft2c, line_projection_matrix


def forward_op(image: torch.Tensor, sens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A x = M F S x. image (B, H, W, 2), sens (B, C, H, W, 2), mask (B, 1, Hm, W, 1) -> (B, C, H, W, 2)."""
    return mask * fft2c(sense_expand(image, sens))


def adjoint_op(kspace: torch.Tensor, sens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A^H k = S^H F^H M k. kspace (B, C, H, W, 2) -> (B, H, W, 2)."""
    return sense_reduce(ifft2c(mask * kspace), sens)


class ExportTerms(NamedTuple):
    """What an exported graph computes once for every cascade's data consistency (module docstring).

    lines: () bool, the mask is the same in every row. qr, qi: (B or 1, 1, W, W) the round trip along W
    (``medmtl.fft.line_projection_matrix`` of the first row). data_image: (B, C, H, W, 2) F^H M y for soft data
    consistency, F^H y for the gradient step.
    """

    lines: torch.Tensor
    qr: torch.Tensor
    qi: torch.Tensor
    data_image: torch.Tensor


def export_terms(
    measured: torch.Tensor, mask: torch.Tensor, soft: bool, measured_image: torch.Tensor
) -> ExportTerms:
    """``ExportTerms`` of measured k-space (B, C, H, W, 2) and its mask (B, 1, Hm, W, 1); ``measured_image`` is
    ifft2c(measured), which the network has already computed (the gradient step's data image)."""
    qr, qi = line_projection_matrix(mask[:, 0, 0, :, 0], measured.dtype)
    data_image = ifft2c(mask * measured) if soft else measured_image
    return ExportTerms((mask == mask[:, :, :1]).all(), qr[:, None], qi[:, None], data_image)


def _round_trip_by_lines(x, mask, qr, qi):
    return complex_matmul_right(x, qr, qi)


def _round_trip_by_planes(x, mask, qr, qi):
    return ifft2c(mask * fft2c(x))


def masked_round_trip(coil_images: torch.Tensor, mask: torch.Tensor, terms: ExportTerms) -> torch.Tensor:
    """F^H M F of coil images (B, C, H, W, 2): one W x W product when ``terms.lines``, else 2D transforms."""
    return torch.cond(
        terms.lines, _round_trip_by_lines, _round_trip_by_planes, (coil_images, mask, terms.qr, terms.qi)
    )


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
        self,
        image: torch.Tensor,
        measured: torch.Tensor,
        mask: torch.Tensor,
        sens: torch.Tensor,
        terms: ExportTerms | None = None,
    ) -> torch.Tensor:
        """image (B, H, W, 2) -> data-consistent image (B, H, W, 2). With ``terms`` (exported graphs), the
        same step as S^H (S x - w F^H M F S x + w F^H M y)."""
        coil_images = sense_expand(image, sens)
        if terms is not None:
            w = self.weight
            blended = coil_images - w * masked_round_trip(coil_images, mask, terms) + w * terms.data_image
            return sense_reduce(blended, sens)
        return sense_reduce(ifft2c(self.blend(fft2c(coil_images), measured, mask)), sens)


class GradientDC(nn.Module):
    """One gradient step on ||A x - y||^2 / 2 with a learned step size ``step`` (starts at 1).

    ``forward`` returns the step's update, step * A^H (A x - y), for the caller to subtract.
    """

    def __init__(self):
        super().__init__()
        self.step = nn.Parameter(torch.ones(()))

    def forward(
        self,
        image: torch.Tensor,
        measured: torch.Tensor,
        mask: torch.Tensor,
        sens: torch.Tensor,
        terms: ExportTerms | None = None,
    ) -> torch.Tensor:
        """image (B, H, W, 2), measured (B, C, H, W, 2) zero off the mask -> update (B, H, W, 2). With
        ``terms`` (exported graphs), the same update as step * S^H (F^H M F S x - F^H y)."""
        if terms is not None:
            residual = masked_round_trip(sense_expand(image, sens), mask, terms) - terms.data_image
            return self.step * sense_reduce(residual, sens)
        residual = forward_op(image, sens, mask) - measured
        return self.step * sense_reduce(ifft2c(residual), sens)
