"""Complex fully connected layer on real tensors with a trailing (real, imag) pair."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.nn.complex.init import complex_kaiming_


class ComplexLinear(nn.Module):
    """y = W x + b with complex W (out_features, in_features) and b (out_features,).

    ``weight``: (out_features, in_features, 2), ``bias``: (out_features, 2). The trailing pair of the
    input is contiguous, so (..., in, 2) viewed as (..., 2 in) is already the interleaved vector
    [xr_0, xi_0, xr_1, ...]; one real matmul with the interleaved block weight [[Wr, -Wi], [Wi, Wr]]
    then gives (..., 2 out) = (..., out, 2) with no layout copy on either side.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, 2))
        self.bias = nn.Parameter(torch.empty(out_features, 2)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        complex_kaiming_(self.weight, self.in_features)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _interleaved_weight(self) -> torch.Tensor:
        """(out, in, 2) -> (2 out, 2 in): row 2o gives the real part of output o, row 2o + 1 the imaginary."""
        wr, wi = self.weight.unbind(-1)
        real_row = torch.stack((wr, -wi), dim=-1)
        imag_row = torch.stack((wi, wr), dim=-1)
        return torch.stack((real_row, imag_row), dim=1).reshape(2 * self.out_features, 2 * self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features, 2) -> (..., out_features, 2)."""
        if x.dim() < 2 or x.shape[-2:] != (self.in_features, 2):
            raise ValueError(f"ComplexLinear: expected (..., {self.in_features}, 2), got {tuple(x.shape)}")
        bias = None if self.bias is None else self.bias.reshape(-1)
        y = F.linear(x.reshape(*x.shape[:-2], 2 * self.in_features), self._interleaved_weight(), bias)
        return y.reshape(*x.shape[:-2], self.out_features, 2)
