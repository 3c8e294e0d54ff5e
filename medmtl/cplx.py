"""Complex arithmetic and coil combination on real tensors with a trailing (real, imag) pair."""

from __future__ import annotations

import torch


def complex_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., 2) x (..., 2) -> (..., 2), broadcasting."""
    ar, ai = a.unbind(-1)
    br, bi = b.unbind(-1)
    return torch.stack((ar * br - ai * bi, ar * bi + ai * br), dim=-1)


def complex_conj(a: torch.Tensor) -> torch.Tensor:
    """(..., 2) -> (..., 2)."""
    return torch.stack((a[..., 0], -a[..., 1]), dim=-1)


def complex_abs_sq(a: torch.Tensor) -> torch.Tensor:
    """(..., 2) -> (...)."""
    return a[..., 0] ** 2 + a[..., 1] ** 2


def complex_abs(a: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """(..., 2) -> (...). ``eps`` keeps the gradient finite at zero when training through it."""
    return torch.sqrt(complex_abs_sq(a) + eps)


def rss(coil_images: torch.Tensor, coil_dim: int = -4) -> torch.Tensor:
    """Root-sum-of-squares. ``coil_images``: (..., C, H, W, 2) -> (..., H, W)."""
    return torch.sqrt(complex_abs_sq(coil_images).sum(dim=coil_dim + 1 if coil_dim < 0 else coil_dim))


def sense_reduce(coil_images: torch.Tensor, sens_maps: torch.Tensor, coil_dim: int = -4) -> torch.Tensor:
    """SENSE-weighted combination sum_c conj(S_c) x_c. (..., C, H, W, 2) twice -> (..., H, W, 2).

    With maps normalised so that sum_c |S_c|^2 = 1 this is the least-squares coil combination.
    """
    return complex_mul(complex_conj(sens_maps), coil_images).sum(dim=coil_dim)


def sense_expand(image: torch.Tensor, sens_maps: torch.Tensor, coil_dim: int = -4) -> torch.Tensor:
    """Coil images S_c x. ``image``: (..., H, W, 2), ``sens_maps``: (..., C, H, W, 2) -> (..., C, H, W, 2)."""
    return complex_mul(image.unsqueeze(coil_dim), sens_maps)
