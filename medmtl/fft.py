"""Centred, orthonormal 2D FFTs on real tensors with a trailing (real, imag) pair.

``fft2c(x) == fftshift(fft2(ifftshift(x), norm="ortho"))`` over the two axes before the pair, which is
what ``numpy.fft`` gives with the same shifts. These are the eager versions; the exported graph uses its own
formulation (see DESIGN.md).
"""

from __future__ import annotations

import torch

_DIMS = (-2, -1)


def _check(x: torch.Tensor) -> None:
    if x.ndim < 3 or x.shape[-1] != 2:
        raise ValueError(f"expected a tensor of shape (..., H, W, 2), got {tuple(x.shape)}")


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Image -> k-space. ``x``: (..., H, W, 2) -> (..., H, W, 2)."""
    _check(x)
    c = torch.view_as_complex(x.contiguous())
    c = torch.fft.ifftshift(c, dim=_DIMS)
    c = torch.fft.fft2(c, dim=_DIMS, norm="ortho")
    return torch.view_as_real(torch.fft.fftshift(c, dim=_DIMS))


def ifft2c(x: torch.Tensor) -> torch.Tensor:
    """k-space -> image. ``x``: (..., H, W, 2) -> (..., H, W, 2)."""
    _check(x)
    c = torch.view_as_complex(x.contiguous())
    c = torch.fft.ifftshift(c, dim=_DIMS)
    c = torch.fft.ifft2(c, dim=_DIMS, norm="ortho")
    return torch.view_as_real(torch.fft.fftshift(c, dim=_DIMS))
