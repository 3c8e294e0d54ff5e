"""SSIM's sliding window: the defaults and the 1D weights that every path (PyTorch, Triton) filters with.

The defaults are the ones of Wang et al. (2004), skimage (``gaussian_weights=True``), torchmetrics,
pytorch-msssim and MONAI: an 11-tap Gaussian of sigma 1.5 (skimage's ``truncate=3.5`` gives the same 11
taps for sigma 1.5) and the constants K1 = 0.01, K2 = 0.03.
"""

from __future__ import annotations

import math

from medmtl.errors import InputError

KERNEL = "gaussian"
KERNEL_SIZE = 11
SIGMA = 1.5
K1 = 0.01
K2 = 0.03
KERNELS = ("gaussian", "uniform")
TRITON_TAPS = 11  # the longest window the Triton kernels take (their register ring); longer ones use PyTorch


def window_weights(kernel: str, kernel_size: int, sigma: float, where: str = "ssim") -> list[float]:
    """1D window weights (kernel_size,), summing to 1; the N-D window is their outer product.

    ``gaussian``: exp(-k^2 / (2 sigma^2)) for k in [-(size-1)/2, (size-1)/2], normalised (scipy's
    ``gaussian_filter1d`` kernel). ``uniform``: 1 / size (skimage's ``gaussian_weights=False``).
    """
    if kernel not in KERNELS:
        raise InputError(where, f"kernel must be one of {KERNELS}, got {kernel!r}")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise InputError(where, f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    if kernel == "uniform":
        return [1.0 / kernel_size] * kernel_size
    if not sigma > 0:
        raise InputError(where, f"sigma must be > 0, got {sigma!r}")
    radius = kernel_size // 2
    taps = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
    total = math.fsum(taps)
    return [t / total for t in taps]


def ssim_constants(data_range: float, where: str = "ssim") -> tuple[float, float]:
    """(C1, C2) = ((K1 * L)^2, (K2 * L)^2) for the data range L (max - min of the intensity scale)."""
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise InputError(where, f"data_range must be a finite number > 0, got {data_range!r}")
    return (K1 * data_range) ** 2, (K2 * data_range) ** 2
