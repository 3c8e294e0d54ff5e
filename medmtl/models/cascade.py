"""One cascade of the unrolled reconstruction: a learned complex regulariser and a data-consistency step.

``soft`` (regularise, then enforce the data):  x' = DC_w(x + R(x, p))
``gradient`` (one step of a variational network, both terms at x):  x' = x - eta A^H (A x - y) + R(x, p)
``cg`` (MoDL's proximal step, solved by conjugate gradients):  x' = argmin ||A u - y||^2 + lam ||u - z||^2 over u,
with z = x + R(x, p)

R is a complex U-Net on the coil-combined image, optionally reading a prior p (the joint mode's segmentation
probabilities) as extra complex channels with zero imaginary part.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from medmtl.models.data_consistency import ExportTerms, GradientDC, ProximalDC, SoftDC

DCKind = Literal["soft", "gradient", "cg"]


def real_as_complex(x: torch.Tensor) -> torch.Tensor:
    """(...) real -> (..., 2) complex with zero imaginary part."""
    return torch.stack((x, torch.zeros_like(x)), dim=-1)


class Cascade(nn.Module):
    """Args:
    regulariser: (B, 1 + P, H, W, 2) -> (B, 1, H, W, 2) image update; may be shared between cascades.
    dc: the data-consistency kind.
    cg_iterations: conjugate-gradient steps of the ``cg`` kind.
    """

    def __init__(self, regulariser: nn.Module, dc: DCKind, cg_iterations: int = 5):
        super().__init__()
        self.regulariser = regulariser
        self.kind = dc
        self.dc = ProximalDC(cg_iterations) if dc == "cg" else SoftDC() if dc == "soft" else GradientDC()

    def forward(
        self,
        image: torch.Tensor,
        measured: torch.Tensor,
        mask: torch.Tensor,
        sens: torch.Tensor,
        prior: torch.Tensor | None = None,
        terms: ExportTerms | None = None,
    ) -> torch.Tensor:
        """image (B, H, W, 2), measured (B, C, H, W, 2), mask (B, 1, Hm, W, 1), sens (B, C, H, W, 2),
        prior (B, P, H, W) real or None -> next image (B, H, W, 2). ``terms``: what an exported graph computes
        once for every cascade's data consistency (``medmtl.models.data_consistency.ExportTerms``)."""
        inputs = image.unsqueeze(1)
        if prior is not None:
            inputs = torch.cat((inputs, real_as_complex(prior)), dim=1)
        update = self.regulariser(inputs).squeeze(1)
        if self.kind != "gradient":
            return self.dc(image + update, measured, mask, sens, terms)
        return image - self.dc(image, measured, mask, sens, terms) + update
