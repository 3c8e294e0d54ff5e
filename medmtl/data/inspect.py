"""Summarise a k-space file: its size, the measured acceleration and the zero-filled image's SSIM."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from skimage.metrics import structural_similarity

from medmtl.cplx import rss
from medmtl.data.files import kspace_to_tensor
from medmtl.fft import ifft2c
from medmtl.io.kspace import KSpaceFile

# skimage's default SSIM window; smaller images use the largest odd window that fits.
SSIM_WINDOW = 7


def zero_filled_rss(kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Root-sum-of-squares of the masked k-space's coil images. (C, H, W) complex, (Hm, W) -> (H, W) float32."""
    coil_images = ifft2c(kspace_to_tensor(kspace * mask))
    return rss(coil_images).numpy()


def center_crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The central ``shape`` (h, w) of a (..., H, W) array, h <= H and w <= W."""
    top = (image.shape[-2] - shape[0]) // 2
    left = (image.shape[-1] - shape[1]) // 2
    return image[..., top : top + shape[0], left : left + shape[1]]


def slice_ssim(target: np.ndarray, image: np.ndarray) -> float | None:
    """SSIM of ``image`` against ``target`` (both (H, W)) with data_range = the target's maximum.

    Both are first centre-cropped to their common size (fastMRI's target is smaller than the k-space
    matrix). None for a blank target, where SSIM is undefined.
    """
    shape = (min(target.shape[0], image.shape[0]), min(target.shape[1], image.shape[1]))
    target, image = center_crop(target, shape), center_crop(image, shape)
    peak = float(target.max())
    if peak <= 0:
        return None
    window = min(SSIM_WINDOW, *(n if n % 2 else n - 1 for n in shape))
    if window < 3:
        return None
    return float(structural_similarity(target, image, win_size=window, data_range=peak))


def inspect_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a k-space file slice by slice and summarise it.

    Returns {"path": str, "slices", "coils", "height", "width": int, "acceleration": float (mask
    elements / sampled elements), "ssim_zf": float or None (mean SSIM over slices of the zero-filled
    RSS image against ``target`` or ``reconstruction_rss``; None without one)}.
    Every slice is read, so a bad slice raises ``KSpaceFileError``.
    """
    with KSpaceFile(path) as f:
        mask = f.mask()
        scores = []
        for i in range(f.num_slices):
            sample = f.read_slice(i)
            if "target" in sample:
                scores.append(slice_ssim(sample["target"], zero_filled_rss(sample["kspace"], mask)))
        scores = [s for s in scores if s is not None]
        return {
            "path": str(path),
            "slices": f.num_slices,
            "coils": f.num_coils,
            "height": f.shape[0],
            "width": f.shape[1],
            "acceleration": float(mask.size / mask.sum()),
            "ssim_zf": float(np.mean(scores)) if scores else None,
        }


def format_line(info: dict[str, Any]) -> str:
    """One line: ``file.h5  slices=20 coils=8 HxW=218x170 accel=3.98x ssim_zf=0.812``."""
    ssim = "n/a" if info["ssim_zf"] is None else f"{info['ssim_zf']:.3f}"
    return (
        f"{info['path']}  slices={info['slices']} coils={info['coils']} "
        f"HxW={info['height']}x{info['width']} accel={info['acceleration']:.2f}x ssim_zf={ssim}"
    )
