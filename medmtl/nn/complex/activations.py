"""Complex activations on real tensors with a trailing (real, imag) pair.

Each takes (B, C, *spatial, 2) (or (B, C, 2) after ``ComplexLinear``) and returns the same shape. The
phase is never computed with atan2: cos(arg z) = Re z / |z| is enough, and stays exportable.
"""

from __future__ import annotations

import torch
from torch import nn

from medmtl.cplx import complex_abs


def _magnitude(x: torch.Tensor) -> torch.Tensor:
    """|z| of (..., 2) -> (..., 1), kept away from 0 by a dtype-sized epsilon so that 1/|z| and the
    gradient of |z| stay finite at z = 0 (float16 included)."""
    return complex_abs(x, eps=torch.finfo(x.dtype).eps ** 2).unsqueeze(-1)


def _channel_view(param: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C,) -> (C, 1, ..., 1) broadcasting against x of shape (B, C, *spatial, 2)."""
    return param.reshape(-1, *([1] * (x.dim() - 2)))


class ModReLU(nn.Module):
    """modReLU (Arjovsky et al. 2016): relu(|z| + b) z / |z|, with a learned bias b per channel.

    ``bias``: (num_features,), initialised to ``bias_init``. The phase passes through unchanged; b < 0
    sets a dead zone of radius -b around the origin, and the default b = 0 starts as the identity.
    """

    def __init__(self, num_features: int, bias_init: float = 0.0):
        super().__init__()
        self.bias = nn.Parameter(torch.full((num_features,), float(bias_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial, 2) -> (B, C, *spatial, 2)."""
        magnitude = _magnitude(x)
        return x * (torch.relu(magnitude + _channel_view(self.bias, x)) / magnitude)


class CReLU(nn.Module):
    """CReLU (Trabelsi et al. 2018): ReLU applied to the real and the imaginary part separately."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial, 2) -> (B, C, *spatial, 2)."""
        return torch.relu(x)


class ZReLU(nn.Module):
    """zReLU (Guberman 2016): z where arg z lies in [0, pi/2] (both parts >= 0), else 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial, 2) -> (B, C, *spatial, 2)."""
        keep = (x[..., :1] >= 0) & (x[..., 1:] >= 0)
        return x * keep.to(x.dtype)


class Cardioid(nn.Module):
    """Cardioid (Virtue et al. 2017): (1 + cos(arg z)) z / 2, which scales by phase and keeps it.

    Real on the positive real axis, zero on the negative one; the phase-sensitive analogue of ReLU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial, 2) -> (B, C, *spatial, 2)."""
        cos_phase = x[..., :1] / _magnitude(x)
        return x * (0.5 * (1.0 + cos_phase))
