"""Classical reconstruction baselines: CG-SENSE with known coil maps.

CG-SENSE solves the Tikhonov-regularised least-squares problem

    x = argmin ||A x - y||^2 + reg * ||x||^2,     A = M F S,

by conjugate gradients on the normal equations (A^H A + reg I) x = A^H y, from x0 = 0. The number of
iterations is a regulariser too: with noisy data the error first falls, then grows as noise is fitted, so
both are chosen on training slices (``benchmarks/recon_seg_eval.py`` does) and then held fixed.
"""

from __future__ import annotations

import torch

from medmtl.errors import InputError
from medmtl.models.data_consistency import adjoint_op, conjugate_gradient, forward_op


def cg_sense(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    sens_maps: torch.Tensor,
    iterations: int = 10,
    reg: float = 0.0,
) -> torch.Tensor:
    """CG-SENSE reconstruction.

    Args:
        kspace: (B, C, H, W, 2) measured k-space (masked here again).
        mask: (B or 1, 1, 1 or H, W, 1) sampling mask, 1 = sampled.
        sens_maps: (B, C, H, W, 2) coil maps.
        iterations: conjugate-gradient iterations (>= 1).
        reg: Tikhonov weight (>= 0), in units of the data term with maps normalised to sum_c |S_c|^2 = 1.

    Returns:
        (B, H, W, 2) complex image in the k-space's intensity units.
    """
    if iterations < 1 or not reg >= 0:
        raise InputError("cg_sense", f"needs iterations >= 1 and reg >= 0, got {iterations} and {reg}")
    if kspace.shape != sens_maps.shape or kspace.dim() != 5:
        raise InputError(
            "cg_sense",
            f"k-space {tuple(kspace.shape)} and maps {tuple(sens_maps.shape)} must both be (B, C, H, W, 2)",
        )

    def normal(x: torch.Tensor) -> torch.Tensor:
        return adjoint_op(forward_op(x, sens_maps, mask), sens_maps, mask) + reg * x

    return conjugate_gradient(normal, adjoint_op(kspace * mask, sens_maps, mask), iterations)
