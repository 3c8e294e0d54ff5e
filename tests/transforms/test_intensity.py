import pytest
import torch

from medmtl.errors import ConfigError, InputError
from medmtl.fft import fft2c
from medmtl.keys import Keys
from medmtl.transforms.coils import rss_image
from medmtl.transforms.intensity import (
    Denormalized,
    NormalizeKSpace,
    NormalizeKSpaced,
    denormalize,
    kspace_scale,
)


def _kspace(c=3, h=17, w=22, gain=1000.0, seed=0):
    return gain * torch.randn(c, h, w, 2, generator=torch.Generator().manual_seed(seed))


def test_scale_is_the_percentile_of_the_zero_filled_rss():
    kspace = _kspace()
    image = rss_image(kspace)
    scale = kspace_scale(kspace)
    assert scale.shape == () and scale.dtype == torch.float32
    assert float((image <= scale).float().mean()) == pytest.approx(0.995, abs=1 / image.numel() + 1e-6)
    assert float(kspace_scale(kspace, quantile=1.0)) == pytest.approx(float(image.max()))


def test_scale_ignores_one_bright_pixel():
    spike = torch.zeros(1, 32, 32, 2)
    spike[0, 5, 5, 0] = 1.0
    base = fft2c(torch.ones(1, 32, 32, 2))
    assert float(kspace_scale(base + 1e3 * fft2c(spike))) == pytest.approx(
        float(kspace_scale(base)), rel=1e-3
    )


def test_falls_back_to_the_maximum_on_mostly_empty_images():
    image = torch.zeros(1, 16, 16, 2)
    image[0, 3, 4, 0] = 7.0
    assert float(kspace_scale(fft2c(image))) == pytest.approx(7.0, rel=1e-5)


@pytest.mark.parametrize("bad", [torch.zeros(2, 8, 8, 2), torch.full((2, 8, 8, 2), float("nan"))])
def test_unnormalisable_input(bad):
    with pytest.raises(InputError, match="cannot normalise"):
        kspace_scale(bad)


def test_array_round_trip():
    kspace = _kspace()
    normalised, scale = NormalizeKSpace()(kspace)
    assert float(kspace_scale(normalised)) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(denormalize(normalised, scale), kspace)
    with pytest.raises(ConfigError):
        NormalizeKSpace(quantile=0)


@pytest.mark.parametrize(("c", "h", "w"), [(1, 9, 15), (4, 16, 16)])
def test_dict_round_trip(c, h, w):
    kspace = _kspace(c, h, w)
    target = rss_image(kspace)
    seg = torch.ones(h, w, dtype=torch.int64)
    out = NormalizeKSpaced()({Keys.KSPACE: kspace, Keys.TARGET: target, Keys.SEG: seg})
    assert out[Keys.SEG] is seg
    torch.testing.assert_close(rss_image(out[Keys.KSPACE]), out[Keys.TARGET])
    back = Denormalized(keys=(Keys.KSPACE, Keys.TARGET))(out)
    torch.testing.assert_close(back[Keys.KSPACE], kspace)
    torch.testing.assert_close(back[Keys.TARGET], target)


def test_normalising_twice_keeps_the_product():
    kspace = _kspace()
    once = NormalizeKSpaced(keys=Keys.KSPACE)({Keys.KSPACE: kspace})
    twice = NormalizeKSpaced(keys=Keys.KSPACE, quantile=0.5)(once)
    assert float(twice[Keys.SCALE]) != pytest.approx(float(once[Keys.SCALE]))
    torch.testing.assert_close(denormalize(twice[Keys.KSPACE], twice[Keys.SCALE]), kspace)


def test_batched_denormalize():
    x = torch.ones(3, 4, 5)
    out = denormalize(x, torch.tensor([1.0, 2.0, 3.0]))
    assert out[:, 0, 0].tolist() == [1.0, 2.0, 3.0]
    assert denormalize(x, torch.tensor(2.0)).sum() == 2 * x.sum()


def test_missing_kspace_and_missing_keys():
    with pytest.raises(InputError, match="scale"):
        NormalizeKSpaced(keys=Keys.TARGET)({Keys.TARGET: torch.ones(4, 4)})
    with pytest.raises(KeyError):
        NormalizeKSpaced()({Keys.KSPACE: _kspace()})  # no target and allow_missing_keys is off
    out = NormalizeKSpaced(allow_missing_keys=True)({Keys.KSPACE: _kspace()})
    assert Keys.TARGET not in out
