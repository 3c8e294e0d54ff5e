"""Complex weight initialisation (Trabelsi et al., "Deep Complex Networks", ICLR 2018, He criterion)."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def complex_kaiming_(weight: torch.Tensor, fan_in: float) -> torch.Tensor:
    """Fill a pair-layout weight (..., 2) in place with Rayleigh magnitudes and uniform phases.

    The magnitude is Rayleigh with mode ``sigma = 1 / sqrt(fan_in)``, so E|w|^2 = 2 / fan_in: a layer
    keeps E|y|^2 = 2 E|x|^2, which a following activation that zeroes about half of its input (CReLU,
    modReLU) brings back to the input energy, the He criterion for complex weights. The phase is uniform
    in [-pi, pi). ``fan_in`` is the number of complex input terms summed into one output.
    """
    if weight.shape[-1] != 2:
        raise ValueError(
            f"complex_kaiming_: weight must end in a (real, imag) pair, got shape {tuple(weight.shape)}"
        )
    sigma = 1.0 / math.sqrt(fan_in)
    shape = weight.shape[:-1]
    # Inverse-CDF sampling of Rayleigh(sigma); 1 - U lies in (0, 1] so the log is finite.
    magnitude = sigma * torch.sqrt(
        -2.0 * torch.log1p(-torch.rand(shape, dtype=weight.dtype, device=weight.device))
    )
    phase = (torch.rand(shape, dtype=weight.dtype, device=weight.device) * 2.0 - 1.0) * math.pi
    weight.copy_(torch.stack((magnitude * torch.cos(phase), magnitude * torch.sin(phase)), dim=-1))
    return weight
