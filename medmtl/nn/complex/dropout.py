"""Complex dropout on real tensors with a trailing (real, imag) pair.

A dropped complex value loses its real and imaginary part together (one Bernoulli draw per complex
element, or per channel), and kept values are scaled by 1 / (1 - p) so the expectation is unchanged.
Dropping the two parts independently, as ``torch.nn.Dropout`` on the pair would, changes the phase.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import ConfigError


class _ComplexDropoutBase(nn.Module):
    # Spatial dims of the input, or None for any rank; with a rank the mask is per channel.
    _channel_spatial_dims: ClassVar[int | None]

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(type(self).__name__, f"p must lie in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial, 2) -> (B, C, *spatial, 2); the identity in eval mode."""
        n = self._channel_spatial_dims
        if n is not None and (x.dim() != n + 3 or x.shape[-1] != 2):
            raise ValueError(
                f"{type(self).__name__}: expected (B, C, <{n} spatial dims>, 2), got {tuple(x.shape)}"
            )
        if not self.training or self.p == 0.0:
            return x
        # Elementwise: one draw per complex value; per channel: one per (sample, channel).
        mask_shape = x.shape[:-1] if n is None else x.shape[:2] + (1,) * n
        mask = F.dropout(x.new_ones(mask_shape), self.p, training=True)
        return x * mask.unsqueeze(-1)


class ComplexDropout(_ComplexDropoutBase):
    """Drops whole complex values of (..., 2), any rank."""

    _channel_spatial_dims = None


class ComplexDropout2d(_ComplexDropoutBase):
    """Drops whole channels of (B, C, H, W, 2)."""

    _channel_spatial_dims = 2


class ComplexDropout3d(_ComplexDropoutBase):
    """Drops whole channels of (B, C, D, H, W, 2)."""

    _channel_spatial_dims = 3
