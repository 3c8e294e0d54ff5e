import numpy as np
import pytest
import torch

from medmtl.cplx import complex_abs_sq, complex_mul, sense_expand
from medmtl.errors import ConfigError, InputError
from medmtl.fft import fft2c, ifft2c
from medmtl.keys import Keys
from medmtl.transforms.acs import acs_mask_from_mask
from medmtl.transforms.coils import (
    CoilCombine,
    CoilCombined,
    EstimateCoilSensitivities,
    EstimateCoilSensitivitiesd,
    estimate_sens_maps,
    rss_image,
    sense_image,
)
from medmtl.transforms.masks import make_mask


def phantom(h, w, coils, seed=0):
    """Smooth object with smooth phase, (H, W, 2); smooth maps with sum_c |S_c|^2 = 1, (C, H, W, 2); support."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.65) ** 2)
    inner = np.sqrt(((x - 0.2) / 0.3) ** 2 + ((y + 0.1) / 0.25) ** 2)
    magnitude = 1 / (1 + np.exp((r - 1) * 25)) * (0.6 + 0.4 / (1 + np.exp((inner - 1) * 15)))
    magnitude *= 1 + 0.15 * np.sin(3 * x + 1) * np.cos(2 * y)
    phase = 0.8 * x * y + 0.6 * y + rng.uniform(-np.pi, np.pi)
    image = magnitude * np.exp(1j * phase)
    angles = 2 * np.pi * np.arange(coils) / coils + rng.uniform(0, 2 * np.pi)
    maps = np.stack(
        [
            np.exp(-((x - 1.3 * np.cos(a)) ** 2 + (y - 1.3 * np.sin(a)) ** 2) / (2 * 0.8**2))
            * np.exp(1j * (0.7 * (x * np.cos(a) + y * np.sin(a)) + rng.uniform(-np.pi, np.pi)))
            for a in angles
        ]
    )
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0))

    def pair(z):
        return torch.from_numpy(np.stack([z.real, z.imag], -1).astype(np.float32))

    return pair(image), pair(maps), torch.from_numpy(magnitude > 0.1 * magnitude.max())


def map_error(estimate, truth, support):
    """||S_hat - S e^{i theta}|| / ||S|| over the support, theta = angle(sum_c conj(S_c) S_hat_c) per pixel."""
    s_hat, s = torch.view_as_complex(estimate), torch.view_as_complex(truth)
    phase = torch.sgn((s.conj() * s_hat).sum(0))
    diff = (s_hat - s * phase)[:, support]
    return float(diff.abs().pow(2).sum().sqrt() / s[:, support].abs().pow(2).sum().sqrt())


def simulate(h, w, coils, seed=0, noise=0.0):
    image, maps, support = phantom(h, w, coils, seed)
    kspace = fft2c(sense_expand(image, maps))
    if noise:
        gen = torch.Generator().manual_seed(seed)
        kspace = kspace + noise * float(image.abs().max()) * torch.randn(kspace.shape, generator=gen)
    mask = torch.from_numpy(make_mask("equispaced", (h, w), 4, 0.08, np.random.default_rng(seed)))[
        None, :, :, None
    ]
    return kspace * mask, mask, image, maps, support


@pytest.mark.parametrize("method", ["lowres", "walsh"])
@pytest.mark.parametrize(("h", "w", "coils"), [(64, 64, 8), (57, 75, 6)])
def test_map_error_against_known_maps(method, h, w, coils):
    kspace, mask, _, maps, support = simulate(h, w, coils)
    estimate = estimate_sens_maps(kspace, acs_mask_from_mask(mask), method=method)
    assert estimate.shape == maps.shape and estimate.dtype == torch.float32
    # measured 0.042-0.047 at these sizes (noise-free, 5-6 ACS lines); the sine-squared window gave 0.11
    assert map_error(estimate, maps, support) < 0.08
    norm = complex_abs_sq(estimate).sum(0)[support]
    assert float((norm - 1).abs().median()) < 0.02


def test_estimated_maps_combine_to_the_magnitude():
    kspace, mask, image, _, support = simulate(48, 48, 4)
    full = fft2c(sense_expand(image, phantom(48, 48, 4)[1]))
    estimate = estimate_sens_maps(kspace, acs_mask_from_mask(mask))
    combined = sense_image(full, estimate)  # phase of the image is in the maps, so this is ~ real positive
    magnitude = image.pow(2).sum(-1).sqrt()
    residual = combined - torch.stack([magnitude, torch.zeros_like(magnitude)], -1)
    # measured 0.078 (4 ACS lines); the true maps, which keep the image phase in the image, give 0.83
    assert float(residual[support].norm() / magnitude[support].norm()) < 0.15


def test_support_threshold_zeroes_the_background():
    kspace, mask, _, _, _ = simulate(48, 48, 4)
    maps = estimate_sens_maps(kspace, acs_mask_from_mask(mask), support_threshold=0.2)
    assert float(complex_abs_sq(maps)[:, 0, 0].sum()) == 0


def test_no_acs_and_bad_arguments():
    kspace, _, _, _, _ = simulate(32, 32, 2)
    with pytest.raises(InputError, match="ACS"):
        estimate_sens_maps(kspace, torch.zeros(1, 1, 32, 1))
    acs = torch.ones(1, 1, 32, 1)
    with pytest.raises(ConfigError, match="method"):
        estimate_sens_maps(kspace, acs, method="espirit")
    with pytest.raises(ConfigError, match="odd"):
        estimate_sens_maps(kspace, acs, method="walsh", kernel_size=4)


def test_dict_estimator_uses_acs_or_mask():
    kspace, mask, _, maps, _ = simulate(40, 36, 3)
    from_mask = EstimateCoilSensitivitiesd()({Keys.KSPACE: kspace, Keys.MASK: mask})
    from_acs = EstimateCoilSensitivitiesd()({Keys.KSPACE: kspace, Keys.ACS: acs_mask_from_mask(mask)})
    torch.testing.assert_close(from_mask[Keys.SENS], from_acs[Keys.SENS])
    torch.testing.assert_close(
        from_acs[Keys.SENS], EstimateCoilSensitivities()(kspace, acs_mask_from_mask(mask))
    )
    kept = EstimateCoilSensitivitiesd(overwrite=False)(
        {Keys.KSPACE: kspace, Keys.MASK: mask, Keys.SENS: maps}
    )
    assert kept[Keys.SENS] is maps
    with pytest.raises(InputError, match="neither"):
        EstimateCoilSensitivitiesd()({Keys.KSPACE: kspace})


@pytest.mark.parametrize(("h", "w", "coils"), [(16, 16, 1), (17, 23, 4)])
def test_rss_equals_magnitude_with_normalised_maps(h, w, coils):
    image, maps, _ = phantom(h, w, coils)
    kspace = fft2c(sense_expand(image, maps))
    torch.testing.assert_close(rss_image(kspace), image.pow(2).sum(-1).sqrt(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(CoilCombine("rss")(kspace), rss_image(kspace))


@pytest.mark.parametrize(("h", "w", "coils"), [(16, 16, 1), (17, 23, 4)])
def test_sense_with_true_maps_recovers_the_image(h, w, coils):
    image, maps, _ = phantom(h, w, coils)
    kspace = fft2c(sense_expand(image, maps))
    torch.testing.assert_close(sense_image(kspace, maps), image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        CoilCombine("sense", complex_output=True)(kspace, maps), image, atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(
        CoilCombine("sense")(kspace, maps), image.pow(2).sum(-1).sqrt(), atol=1e-5, rtol=1e-4
    )


def test_sense_is_not_rss_with_wrong_maps():
    image, maps, _ = phantom(20, 20, 3)
    kspace = fft2c(sense_expand(image, maps))
    other = complex_mul(maps, torch.tensor([0.0, 1.0]))  # a 90 degree rotation changes the phase only
    assert not torch.allclose(sense_image(kspace, other), image, atol=1e-3)


def test_batched_combination():
    image, maps, _ = phantom(12, 14, 2)
    kspace = fft2c(sense_expand(image, maps))
    batch = torch.stack([kspace, 2 * kspace])
    assert rss_image(batch).shape == (2, 12, 14)
    torch.testing.assert_close(sense_image(batch, maps)[1], 2 * image, atol=1e-5, rtol=1e-4)


def test_dict_combination():
    image, maps, _ = phantom(20, 18, 3)
    kspace = fft2c(sense_expand(image, maps))
    out = CoilCombined(method="sense")({Keys.KSPACE: kspace, Keys.SENS: maps})
    torch.testing.assert_close(out[Keys.TARGET], image.pow(2).sum(-1).sqrt(), atol=1e-5, rtol=1e-4)
    assert CoilCombined(output_key="zf")({Keys.KSPACE: kspace})["zf"].shape == (20, 18)
    with pytest.raises(ConfigError):
        CoilCombine("rss", complex_output=True)
    with pytest.raises(InputError, match="sensitivities"):
        CoilCombine("sense")(kspace)


def test_ifft_of_zero_filled_is_consistent():
    image, maps, _ = phantom(16, 16, 2)
    kspace = fft2c(sense_expand(image, maps))
    torch.testing.assert_close(ifft2c(kspace), sense_expand(image, maps), atol=1e-5, rtol=1e-4)


def test_map_error_is_phase_invariant_but_not_blind():
    _, maps, support = phantom(24, 24, 4)
    per_pixel_phase = torch.polar(torch.ones(24, 24), torch.linspace(0, 6, 24 * 24).reshape(24, 24))
    rotated = torch.view_as_real(torch.view_as_complex(maps) * per_pixel_phase)
    assert map_error(rotated, maps, support) < 1e-5
    assert map_error(maps.roll(1, dims=0), maps, support) > 0.3
