"""Complex batch and instance normalisation by whitening (Trabelsi et al., "Deep Complex Networks").

Each channel's (real, imag) pair is centred and multiplied by the inverse square root of its 2x2
covariance V = [[Vrr, Vri], [Vri, Vii]] (+ eps on the diagonal), so that the output's real and imaginary
parts are uncorrelated with unit variance. Scaling the parts separately would leave them correlated.
The inverse square root is closed form, so the graph exports with elementwise ONNX ops only: with
s = sqrt(det V) and t = sqrt(Vrr + Vii + 2s), V^(-1/2) = [[Vii + s, -Vri], [-Vri, Vrr + s]] / (s t).
The learned affine part is a symmetric 2x2 gamma per channel, initialised to I / sqrt(2) so that the
output starts with E|z|^2 = 1, and a complex beta.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from medmtl.errors import ConfigError

_EPS = 1e-5


def _per_channel(param: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """(C, *tail) -> (1, C, 1, ..., 1, *tail) against a (B, C, *spatial, *tail) tensor."""
    return param.reshape(1, param.shape[0], *([1] * spatial_dims), *param.shape[1:])


def _covariance(xc: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred (B, C, *spatial, 2) -> Vrr, Vri, Vii averaged over ``dims`` of the parts, kept as size 1."""
    xr, xi = xc.unbind(-1)
    return (
        (xr * xr).mean(dim=dims, keepdim=True),
        (xr * xi).mean(dim=dims, keepdim=True),
        (xi * xi).mean(dim=dims, keepdim=True),
    )


def _whiten(
    xc: torch.Tensor,
    covariance: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    eps: float,
    gamma: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """Centred (B, C, *spatial, 2) -> gamma V^(-1/2) xc, with V = covariance + eps I (each part
    broadcasting against (B, C, *spatial)), gamma = [[grr, gri], [gri, gii]] or the identity."""
    vrr, vri, vii = covariance
    vrr, vii = vrr + eps, vii + eps
    s = torch.sqrt(vrr * vii - vri * vri)
    t = torch.sqrt(vrr + vii + 2.0 * s)
    scale = 1.0 / (s * t)
    wrr, wri, wii = (vii + s) * scale, -vri * scale, (vrr + s) * scale
    if gamma is not None:
        # Fold gamma into the whitening matrix so the large tensor is touched once.
        grr, gri, gii = gamma
        wrr, wri, wir, wii = (
            grr * wrr + gri * wri,
            grr * wri + gri * wii,
            gri * wrr + gii * wri,
            gri * wri + gii * wii,
        )
    else:
        wir = wri
    xr, xi = xc.unbind(-1)
    return torch.stack((wrr * xr + wri * xi, wir * xr + wii * xi), dim=-1)


class _ComplexNorm(nn.Module):
    """Affine parameters and the whitening step shared by the batch and instance norms."""

    _spatial_dims: ClassVar[int]

    def __init__(self, num_features: int, eps: float = _EPS, affine: bool = True):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        if affine:
            # (grr, gri, gii) per channel, and (beta_r, beta_i).
            self.weight = nn.Parameter(
                torch.tensor([1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)]).repeat(num_features, 1)
            )
            self.bias = nn.Parameter(torch.zeros(num_features, 2))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Check the shape; compute in at least float32 (half-precision variances are too coarse), as
        PyTorch's own norms do under autocast."""
        if x.dim() != self._spatial_dims + 3 or x.shape[1] != self.num_features or x.shape[-1] != 2:
            raise ValueError(
                f"{type(self).__name__}: expected (B, {self.num_features}, "
                f"<{self._spatial_dims} spatial dims>, 2), got {tuple(x.shape)}"
            )
        return x.to(torch.promote_types(x.dtype, torch.float32))

    def _normalise(self, xc: torch.Tensor, covariance) -> torch.Tensor:
        n = self._spatial_dims
        gamma = None if self.weight is None else tuple(_per_channel(g, n) for g in self.weight.unbind(-1))
        y = _whiten(xc, covariance, self.eps, gamma)
        return y if self.bias is None else y + _per_channel(self.bias, n)


class _ComplexBatchNorm(_ComplexNorm):
    """Statistics over the batch and space per channel; running estimates for eval mode."""

    def __init__(self, num_features: int, eps: float = _EPS, momentum: float = 0.1, affine: bool = True):
        super().__init__(num_features, eps, affine)
        if not 0.0 < momentum <= 1.0:
            raise ConfigError(type(self).__name__, f"momentum must lie in (0, 1], got {momentum}")
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features, 2))
        # (Vrr, Vri, Vii): the identity, so eval mode before any training step is the affine part alone.
        self.register_buffer("running_covar", torch.tensor([1.0, 0.0, 1.0]).repeat(num_features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial, 2) -> (B, C, *spatial, 2), at least float32.

        Train mode uses the batch statistics and updates the running ones with them (unbiased
        covariance, like ``torch.nn.BatchNorm``); eval mode uses the running ones.
        """
        x = self._prepare(x)
        n = self._spatial_dims
        if self.training:
            dims = (0, *range(2, n + 2))
            count = math.prod(x.shape[d] for d in dims)
            if count < 2:
                raise ValueError(
                    f"{type(self).__name__}: training needs more than 1 value per channel, "
                    f"got {tuple(x.shape)}"
                )
            mean = x.mean(dim=dims, keepdim=True)
            xc = x - mean
            covariance = _covariance(xc, dims)
            with torch.no_grad():
                m = self.momentum
                self.running_mean.lerp_(mean.reshape(self.num_features, 2), m)
                batch_covar = torch.stack([v.reshape(self.num_features) for v in covariance], dim=-1)
                self.running_covar.lerp_(batch_covar * (count / (count - 1)), m)
            return self._normalise(xc, covariance)
        mean = _per_channel(self.running_mean, n)
        covariance = tuple(_per_channel(v, n) for v in self.running_covar.unbind(-1))
        return self._normalise(x - mean, covariance)


class _ComplexInstanceNorm(_ComplexNorm):
    """Statistics over space per sample and channel, in train and eval mode alike."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial, 2) -> (B, C, *spatial, 2), at least float32."""
        x = self._prepare(x)
        dims = tuple(range(2, self._spatial_dims + 2))
        xc = x - x.mean(dim=dims, keepdim=True)
        return self._normalise(xc, _covariance(xc, dims))


class ComplexBatchNorm2d(_ComplexBatchNorm):
    """Complex batch normalisation of (B, C, H, W, 2). ``weight``: (C, 3) gamma as (grr, gri, gii);
    ``bias``: (C, 2); buffers ``running_mean`` (C, 2) and ``running_covar`` (C, 3) as (Vrr, Vri, Vii)."""

    _spatial_dims = 2


class ComplexBatchNorm3d(_ComplexBatchNorm):
    """As ``ComplexBatchNorm2d`` for (B, C, D, H, W, 2)."""

    _spatial_dims = 3


class ComplexInstanceNorm2d(_ComplexInstanceNorm):
    """Complex instance normalisation of (B, C, H, W, 2). ``weight``: (C, 3) gamma as (grr, gri, gii);
    ``bias``: (C, 2)."""

    _spatial_dims = 2


class ComplexInstanceNorm3d(_ComplexInstanceNorm):
    """As ``ComplexInstanceNorm2d`` for (B, C, D, H, W, 2)."""

    _spatial_dims = 3
