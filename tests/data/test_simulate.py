"""The multi-coil simulator: normalised smooth coil maps, exact coil combination, noise level, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medmtl.cplx import complex_abs, rss, sense_reduce
from medmtl.data.simulate import SimulateMultiCoil, SimulateMultiCoild
from medmtl.errors import ConfigError
from medmtl.fft import ifft2c
from medmtl.keys import Keys


def phantom(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A seeded (1, H, W) image: an ellipse of random texture on a zero background."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    inside = (y / 0.8) ** 2 + (x / 0.6) ** 2 < 1
    return torch.from_numpy((inside * rng.uniform(0.2, 1.0, (height, width)))[None].astype(np.float32))


SIZES = [(17, 23), (32, 32), (48, 21)]


@pytest.mark.parametrize("height, width", SIZES)
@pytest.mark.parametrize("coils", [1, 5])
def test_maps_are_normalised_and_combination_is_exact(height, width, coils):
    image = phantom(height, width)
    sim = SimulateMultiCoil(num_coils=coils, noise_level=0.0).set_random_state(3)(image)
    assert sim.kspace.shape == sim.sens_maps.shape == (coils, height, width, 2)
    assert sim.kspace.dtype == sim.sens_maps.dtype == sim.target.dtype == torch.float32
    torch.testing.assert_close(
        sim.sens_maps.square().sum((-1, 0)), torch.ones(height, width), atol=1e-5, rtol=0
    )
    coil_images = ifft2c(sim.kspace)
    torch.testing.assert_close(sim.target, image[0])
    torch.testing.assert_close(rss(coil_images), sim.target, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        complex_abs(sense_reduce(coil_images, sim.sens_maps)), sim.target, atol=1e-5, rtol=0
    )


def _max_step(maps: torch.Tensor) -> float:
    """Largest complex difference between neighbouring pixels of (C, H, W, 2) maps."""
    return max(maps.diff(dim=1).norm(dim=-1).max().item(), maps.diff(dim=2).norm(dim=-1).max().item())


@pytest.mark.parametrize("seed", [0, 1])
def test_maps_and_phase_are_smooth(seed):
    # The maps are drawn in normalised coordinates, so the same seed gives the same maps at any matrix size.
    # A smooth map's neighbour differences halve when the matrix doubles; a rough one's would not.
    steps = [
        _max_step(
            SimulateMultiCoil(num_coils=6, noise_level=0.0)
            .set_random_state(seed)(torch.ones(1, n, n))
            .sens_maps
        )
        for n in (32, 64)
    ]
    assert steps[0] < 0.4 and steps[1] < 0.6 * steps[0]
    # A flat image's coil-combined image carries the image phase: not constant, but smooth.
    sim = SimulateMultiCoil(num_coils=6, noise_level=0.0).set_random_state(seed)(torch.ones(1, 64, 64))
    phase = torch.angle(torch.view_as_complex(sense_reduce(ifft2c(sim.kspace), sim.sens_maps).contiguous()))
    step = torch.angle(torch.exp(1j * phase.diff(dim=-1))).abs().max()
    assert 0 < step < 0.2


def test_seeded_reproducible_and_fresh_per_call():
    image = phantom(20, 24)
    a = SimulateMultiCoil(num_coils=3).set_random_state(7)
    b = SimulateMultiCoil(num_coils=3).set_random_state(7)
    first_a, first_b = a(image), b(image)
    for x, y in zip(first_a, first_b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    second = a(image)
    assert not torch.equal(second.sens_maps, first_a.sens_maps)
    assert not torch.equal(second.kspace, first_a.kspace)
    other = SimulateMultiCoil(num_coils=3).set_random_state(8)(image)
    assert not torch.equal(other.sens_maps, first_a.sens_maps)
    torch.testing.assert_close(a(image, randomize=False).sens_maps, second.sens_maps, rtol=0, atol=0)


@pytest.mark.parametrize("level", [0.01, 0.1])
def test_noise_level_is_relative_to_signal_rms(level):
    image = phantom(64, 48)
    clean = SimulateMultiCoil(num_coils=4, noise_level=0.0).set_random_state(5)(image).kspace
    noisy = SimulateMultiCoil(num_coils=4, noise_level=level).set_random_state(5)(image).kspace
    rms = clean.square().sum(-1).mean().sqrt()
    measured = (noisy - clean).square().sum(-1).mean().sqrt() / rms
    assert abs(measured / level - 1) < 0.03


def test_dict_twin_writes_keys_and_segmentation():
    image = MetaTensor(phantom(19, 26))
    label = (image > 0.6).float() + (image > 0.8).float()
    out = SimulateMultiCoild(num_coils=2, noise_level=0.0).set_random_state(0)(
        {Keys.IMAGE: image, Keys.LABEL: label}
    )
    assert out[Keys.KSPACE].shape == out[Keys.SENS].shape == (2, 19, 26, 2)
    assert type(out[Keys.KSPACE]) is torch.Tensor  # no MONAI metadata in k-space
    assert out[Keys.SEG].dtype == torch.int64 and out[Keys.SEG].shape == (19, 26)
    torch.testing.assert_close(out[Keys.SEG], label[0].long())
    torch.testing.assert_close(out[Keys.TARGET], image[0].as_tensor())
    assert Keys.IMAGE in out and Keys.LABEL in out
    # Same draws as the array transform under the same seed.
    array = SimulateMultiCoil(num_coils=2, noise_level=0.0).set_random_state(0)(image)
    torch.testing.assert_close(out[Keys.KSPACE], array.kspace, rtol=0, atol=0)


def test_dict_twin_without_label():
    out = SimulateMultiCoild(num_coils=2)({Keys.IMAGE: phantom(16, 16)})
    assert Keys.SEG not in out and out[Keys.KSPACE].shape == (2, 16, 16, 2)


@pytest.mark.parametrize(
    "kwargs", [{"num_coils": 0}, {"noise_level": -1.0}, {"noise_level": float("nan")}, {"phase_scale": -1.0}]
)
def test_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        SimulateMultiCoil(**kwargs)


@pytest.mark.parametrize("shape", [(16, 16), (2, 16, 16), (1, 1, 16, 16)])
def test_bad_image_shape(shape):
    with pytest.raises(ConfigError, match="image"):
        SimulateMultiCoil(num_coils=2)(torch.ones(shape))
