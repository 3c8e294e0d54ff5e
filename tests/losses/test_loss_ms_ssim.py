"""MS-SSIM against pytorch-msssim (values and gradients), masks, the module and input errors."""

from __future__ import annotations

import pytest
import torch

from medmtl.errors import InputError
from medmtl.losses import MSSSIM, ms_ssim, ssim

pytorch_msssim = pytest.importorskip("pytorch_msssim")


def _pair(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    return x, (x + 0.15 * torch.randn(shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("shape", [(2, 1, 177, 180), (1, 2, 181, 193)])
def test_matches_pytorch_msssim_values_and_gradients(shape):
    x, y = _pair(shape, seed=shape[-1])
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ours = ms_ssim(xa, y, 1.0)
    theirs = pytorch_msssim.ms_ssim(xb, y, data_range=1.0)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-7, rtol=1e-4)


def test_fewer_scales_and_custom_weights_match_pytorch_msssim():
    x, y = _pair((1, 1, 97, 101), seed=1)  # pytorch-msssim wants > 16 (win - 1) whatever the scales
    weights = [0.3, 0.3, 0.4]
    ours = ms_ssim(x, y, 1.0, weights=tuple(weights), kernel_size=7)
    theirs = pytorch_msssim.ms_ssim(x, y, data_range=1.0, weights=weights, win_size=7)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_one_scale_is_ssim_and_per_image_values_average():
    x, y = _pair((2, 2, 40, 41), seed=2)
    assert ms_ssim(x, y, 1.0, weights=(1.0,)).item() == pytest.approx(ssim(x, y, 1.0).item(), abs=1e-6)
    per_image = ms_ssim(x, y, 1.0, weights=(0.5, 0.5), reduction="none")
    assert per_image.shape == (2, 2)
    assert ms_ssim(x, y, 1.0, weights=(0.5, 0.5)).item() == pytest.approx(per_image.mean().item(), abs=1e-6)


def test_mask_of_ones_changes_nothing_and_module_matches():
    x, y = _pair((1, 1, 48, 50), seed=3)
    options = {"weights": (0.2, 0.3, 0.5), "kernel_size": 5}
    plain = ms_ssim(x, y, 1.0, **options).item()
    assert ms_ssim(x, y, 1.0, mask=torch.ones(1, 1, 48, 50), **options).item() == pytest.approx(plain, abs=1e-6)
    assert MSSSIM(1.0, **options)(x, y).item() == pytest.approx(plain)


@pytest.mark.parametrize(
    ("pred", "kwargs", "words"),
    [
        (torch.rand(1, 1, 100, 100), {}, "below kernel_size"),
        (torch.rand(1, 1, 20, 20, 20), {"weights": (1.0,)}, "2D images"),
        (torch.rand(1, 1, 30, 30), {"weights": ()}, "at least one scale"),
    ],
)
def test_bad_inputs_raise_input_errors(pred, kwargs, words):
    with pytest.raises(InputError, match=r"^ms_ssim: ") as info:
        ms_ssim(pred, pred.clone(), 1.0, **kwargs)
    assert words in str(info.value)
