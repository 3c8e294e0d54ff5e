import pytest
import torch

from medmtl.errors import ConfigError, InputError
from medmtl.fft import fft2c, ifft2c
from medmtl.keys import Keys
from medmtl.transforms.spatial import (
    KSpaceCenterCrop,
    KSpaceCenterCropd,
    KSpaceDivisiblePad,
    KSpaceDivisiblePadd,
    center_crop_or_pad,
)


def _sample(c=2, h=21, w=19, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(c, h, w, 2, generator=gen)
    return {
        Keys.KSPACE: fft2c(image),
        Keys.TARGET: torch.rand(h, w, generator=gen),
        Keys.SEG: torch.randint(0, 3, (h, w), generator=gen),
        Keys.SENS: torch.randn(c, h, w, 2, generator=gen),
    }


@pytest.mark.parametrize(("old", "new"), [(7, 4), (8, 5), (5, 8), (4, 7), (6, 6)])
def test_centre_index_is_kept(old, new):
    x = torch.arange(old).float()
    y = center_crop_or_pad(x, (new,), (0,))
    assert y.shape == (new,)
    assert y[new // 2] == old // 2
    if new > old:
        assert y.sum() == x.sum()  # zero padding only


def test_crop_then_pad_is_identity_inside():
    x = torch.randn(3, 9, 11)
    y = center_crop_or_pad(center_crop_or_pad(x, (13, 14), (-2, -1)), (9, 11), (-2, -1))
    torch.testing.assert_close(y, x)


@pytest.mark.parametrize(("c", "h", "w"), [(1, 21, 19), (3, 16, 17), (2, 9, 8)])
def test_crop_shapes_and_content(c, h, w):
    sample = _sample(c, h, w)
    out = KSpaceCenterCropd(size=(8, 7))(sample)
    assert out[Keys.KSPACE].shape == (c, 8, 7, 2)
    assert out[Keys.TARGET].shape == (8, 7) and out[Keys.SEG].shape == (8, 7)
    assert out[Keys.SENS].shape == (c, 8, 7, 2) and out[Keys.SEG].dtype == torch.int64
    expected = center_crop_or_pad(ifft2c(sample[Keys.KSPACE]), (8, 7), (-3, -2))
    torch.testing.assert_close(ifft2c(out[Keys.KSPACE]), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[Keys.TARGET], center_crop_or_pad(sample[Keys.TARGET], (8, 7), (-2, -1)))


def test_crop_keeps_axes_and_never_grows():
    sample = _sample(h=10, w=12)
    assert KSpaceCenterCropd(size=(-1, 20))(sample)[Keys.KSPACE].shape == (2, 10, 12, 2)
    assert KSpaceCenterCropd(size=(None, 5))(sample)[Keys.KSPACE].shape == (2, 10, 5, 2)
    assert KSpaceCenterCrop((4, 4))(sample[Keys.KSPACE]).shape == (2, 4, 4, 2)


@pytest.mark.parametrize(
    ("c", "h", "w", "k", "expected"), [(1, 21, 19, 8, (24, 24)), (3, 16, 17, (4, 1), (16, 17))]
)
def test_divisible_pad(c, h, w, k, expected):
    sample = _sample(c, h, w)
    out = KSpaceDivisiblePadd(k=k)(sample)
    assert out[Keys.KSPACE].shape == (c, *expected, 2)
    assert out[Keys.TARGET].shape == expected and out[Keys.SENS].shape == (c, *expected, 2)
    # zero padding the image keeps its energy, and cropping back recovers it
    image = ifft2c(out[Keys.KSPACE])
    torch.testing.assert_close(
        image.pow(2).sum(), ifft2c(sample[Keys.KSPACE]).pow(2).sum(), rtol=1e-4, atol=1e-4
    )
    back = KSpaceCenterCropd(size=(h, w))(out)
    torch.testing.assert_close(back[Keys.KSPACE], sample[Keys.KSPACE], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back[Keys.SEG], sample[Keys.SEG])


def test_fastmri_style_target_of_another_size():
    sample = _sample(h=30, w=18)
    sample[Keys.TARGET] = torch.rand(16, 16)
    out = KSpaceCenterCropd(size=(16, 16))(sample)
    assert out[Keys.KSPACE].shape[1:3] == (16, 16) and out[Keys.TARGET].shape == (16, 16)


def _mask_1d(w, step=3):
    mask = torch.zeros(1, 1, w, 1)
    mask[:, :, ::step] = 1
    return mask


def test_h_may_change_after_a_1d_mask():
    sample = _sample(h=21, w=19)
    sample[Keys.MASK] = _mask_1d(19)
    sample[Keys.KSPACE] = sample[Keys.KSPACE] * sample[Keys.MASK]
    out = KSpaceCenterCropd(size=(10, -1))(sample)
    assert out[Keys.KSPACE].shape == (2, 10, 19, 2)
    torch.testing.assert_close(out[Keys.MASK], sample[Keys.MASK])
    unsampled = sample[Keys.MASK][0, 0, :, 0] == 0
    assert out[Keys.KSPACE][:, :, unsampled].abs().max() < 1e-5  # still zero off the mask


@pytest.mark.parametrize("transform", [KSpaceCenterCropd(size=(-1, 10)), KSpaceDivisiblePadd(k=(1, 8))])
def test_w_may_not_change_after_a_partial_mask(transform):
    sample = _sample(h=12, w=19)
    sample[Keys.MASK] = _mask_1d(19)
    with pytest.raises(InputError, match=r"W \(phase encode\).*before masking"):
        transform(sample)
    with pytest.raises(InputError, match="before masking"):
        transform.array(sample[Keys.KSPACE], mask=sample[Keys.MASK])


def test_2d_mask_forbids_h_changes_but_a_full_mask_is_resized():
    sample = _sample(h=12, w=19)
    mask = torch.zeros(1, 12, 19, 1)
    mask[:, ::2] = 1
    with pytest.raises(InputError, match=r"H \(readout\)"):
        KSpaceCenterCropd(size=(8, -1))({**sample, Keys.MASK: mask})
    full = {**sample, Keys.MASK: torch.ones(1, 12, 19, 1), Keys.ACS: torch.ones(1, 1, 19, 1)}
    out = KSpaceCenterCropd(size=(8, 9))(full)
    assert out[Keys.MASK].shape == (1, 8, 9, 1) and out[Keys.ACS].shape == (1, 1, 9, 1)
    assert out[Keys.MASK].all()


def test_bad_arguments():
    with pytest.raises(ConfigError):
        KSpaceCenterCrop((0, 4))
    with pytest.raises(ConfigError):
        KSpaceDivisiblePad(0)
    with pytest.raises(InputError, match="H, W, 2"):
        KSpaceDivisiblePad(4)(torch.zeros(3, 4))
    with pytest.raises(KeyError):
        KSpaceDivisiblePadd(4)({Keys.TARGET: torch.zeros(3, 3)})
