"""Coil maps: normalised at every pixel, per coil, and starting from the ACS estimate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmtl.cplx import complex_abs_sq
from medmtl.models.sens_net import SensitivityNet


def _phantom(coils: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smooth maps (C, H, W, 2) with sum |S|^2 = 1, an object (H, W, 2) and its k-space (C, H, W, 2)."""
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    angles = 2 * np.pi * np.arange(coils) / coils
    sens = np.stack(
        [np.exp(-((y - np.sin(a)) ** 2 + (x - np.cos(a)) ** 2)) * np.exp(1j * a * x) for a in angles]
    )
    sens /= np.sqrt((np.abs(sens) ** 2).sum(axis=0))
    image = np.exp(-(x**2 + y**2) / 0.3) * np.exp(0.5j * y)
    coil_images = np.fft.ifftshift(sens * image, axes=(-2, -1))
    kspace = np.fft.fftshift(np.fft.fft2(coil_images, norm="ortho"), axes=(-2, -1))
    as_pair = lambda a: torch.from_numpy(np.stack((a.real, a.imag), -1)).float()  # noqa: E731
    return as_pair(sens), as_pair(image), as_pair(kspace)


def _centre_acs(h: int, w: int, rows: int, cols: int) -> torch.Tensor:
    """(1, 1, rows or 1, W, 1) with the centre ``cols`` columns (and ``rows`` rows for a 2D mask) set."""
    acs = torch.zeros(1, 1, h if rows else 1, w, 1)
    c0 = w // 2 - cols // 2
    if rows:
        r0 = h // 2 - rows // 2
        acs[:, :, r0 : r0 + rows, c0 : c0 + cols] = 1
    else:
        acs[..., c0 : c0 + cols, :] = 1
    return acs


@pytest.mark.parametrize("coils", [1, 3])
@pytest.mark.parametrize(("h", "w", "acs_rows"), [(37, 29, 0), (20, 24, 6)])
@pytest.mark.parametrize("downsample", [1, 4])
def test_maps_have_unit_power_at_every_pixel(coils, h, w, acs_rows, downsample):
    torch.manual_seed(0)
    net = SensitivityNet(chans=2, pools=1, downsample=downsample)
    for p in net.parameters():  # move the refiner off its identity start
        torch.nn.init.normal_(p, std=0.1)
    kspace = torch.randn(2, coils, h, w, 2)
    maps = net(kspace, _centre_acs(h, w, acs_rows, 6))
    assert maps.shape == (2, coils, h, w, 2)
    torch.testing.assert_close(complex_abs_sq(maps).sum(dim=1), torch.ones(2, h, w), rtol=0, atol=1e-5)


def test_starts_from_the_acs_estimate_of_smooth_maps():
    """At initialisation the maps are the smoothed ACS estimate: inside the object they point along the
    true maps, |sum_c conj(S_true) S| close to 1 (maps are defined up to a per-pixel phase)."""
    sens, image, kspace = _phantom(4, 48, 40)
    maps = SensitivityNet(chans=2, pools=1)(kspace[None], _centre_acs(48, 40, 0, 12))[0]
    alignment = torch.sqrt(
        (sens[..., 0] * maps[..., 0] + sens[..., 1] * maps[..., 1]).sum(0) ** 2
        + (sens[..., 0] * maps[..., 1] - sens[..., 1] * maps[..., 0]).sum(0) ** 2
    )
    inside = complex_abs_sq(image) > 0.25
    assert alignment[inside].min() > 0.95


def test_coils_are_refined_independently():
    """Coils go through the refiner as a batch: permuting the input coils permutes the maps."""
    torch.manual_seed(0)
    net = SensitivityNet(chans=2, pools=1)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    kspace = torch.randn(1, 3, 16, 12, 2)
    acs = _centre_acs(16, 12, 0, 4)
    order = torch.tensor([2, 0, 1])
    torch.testing.assert_close(net(kspace[:, order], acs), net(kspace, acs)[:, order])
