"""SSIM's PyTorch path against skimage, its gradient against finite differences, masks, the modules,
the custom op (opcheck) and input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from medmtl.errors import InputError
from medmtl.losses import SSIM, SSIMLoss, ssim, ssim_loss
from medmtl.losses._window import window_weights


def _pair(shape, seed, dtype=torch.float32, noise=0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (x + noise * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


def _skimage(x: torch.Tensor, y: torch.Tensor, data_range: float, **kw) -> float:
    return structural_similarity(
        x.double().numpy(), y.double().numpy(), data_range=data_range, use_sample_covariance=False, **kw
    )


GAUSS = {"gaussian_weights": True, "sigma": 1.5}


@pytest.mark.parametrize("shape", [(11, 11), (23, 19), (40, 33), (13, 14, 15), (11, 16, 12)])
def test_matches_skimage_on_random_images(shape):
    x, y = _pair(shape, seed=sum(shape))
    ours = ssim(x[None, None], y[None, None], 1.0)
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(_skimage(x, y, 1.0, **GAUSS), abs=1e-4)


@pytest.mark.parametrize("kernel_size", [3, 7])
def test_uniform_window_matches_skimage(kernel_size):
    x, y = _pair((21, 18), seed=kernel_size)
    ours = ssim(x[None, None], y[None, None], 1.0, kernel="uniform", kernel_size=kernel_size)
    assert ours.item() == pytest.approx(_skimage(x, y, 1.0, win_size=kernel_size), abs=1e-4)


@pytest.fixture(scope="module")
def mni() -> torch.Tensor:
    """The MNI152 T1 template (1 mm) as a float32 tensor, scaled to [0, 1] (ships with nilearn)."""
    datasets = pytest.importorskip("nilearn.datasets")
    data = np.asarray(datasets.load_mni152_template(resolution=1).get_fdata(), np.float32)
    return torch.from_numpy(data / data.max())


def test_matches_skimage_on_mni_slices(mni):
    g = torch.Generator().manual_seed(0)
    slices = mni[:, :, 80:84].permute(2, 0, 1)  # four axial slices (4, X, Y)
    noisy = (slices + 0.05 * torch.randn(slices.shape, generator=g)).clamp(0, 1)
    ours = ssim(noisy[:, None], slices[:, None], 1.0, reduction="none")[:, 0]
    expected = [_skimage(noisy[i], slices[i], 1.0, **GAUSS) for i in range(4)]
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4)
    assert ssim(noisy[:, None], slices[:, None], 1.0).item() == pytest.approx(np.mean(expected), abs=1e-4)
    # A shifted neighbour slice: a low-SSIM case on real anatomy.
    shifted = ssim(slices[None, None, 0], slices[None, None, 3], 1.0).item()
    assert shifted == pytest.approx(_skimage(slices[0], slices[3], 1.0, **GAUSS), abs=1e-4)


def test_matches_skimage_on_an_mni_volume(mni):
    vol = mni[60:100, 80:120, 60:90]
    blurred = 0.5 * (vol + vol.roll(1, 0))
    ours = ssim(vol[None, None], blurred[None, None], 1.0).item()
    assert ours == pytest.approx(_skimage(vol, blurred, 1.0, **GAUSS), abs=1e-4)


def test_batch_and_channels_average_per_image_values():
    x, y = _pair((2, 3, 17, 16), seed=3)
    per_image = ssim(x, y, 1.0, reduction="none")
    assert per_image.shape == (2, 3)
    for b in range(2):
        for c in range(3):
            assert per_image[b, c].item() == pytest.approx(_skimage(x[b, c], y[b, c], 1.0, **GAUSS), abs=1e-4)
    assert ssim(x, y, 1.0).item() == pytest.approx(per_image.mean().item(), abs=1e-6)


def test_data_range_scales_the_constants():
    x, y = _pair((19, 21), seed=4)
    assert ssim(255 * x[None, None], 255 * y[None, None], 255.0).item() == pytest.approx(
        ssim(x[None, None], y[None, None], 1.0).item(), abs=1e-5
    )


def test_identical_images_score_one_and_the_loss_is_one_minus_ssim():
    x, y = _pair((1, 1, 16, 18), seed=5)
    assert ssim(x, x, 1.0).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim_loss(x, y, 1.0).item() == pytest.approx(1 - ssim(x, y, 1.0).item(), abs=1e-7)


@pytest.mark.parametrize(
    ("shape", "kernel_size", "use_mask"),
    [((2, 1, 9, 8), 5, False), ((1, 2, 8, 9), 3, True), ((1, 1, 6, 7, 5), 3, True)],
)
def test_gradient_passes_gradcheck_in_float64(shape, kernel_size, use_mask):
    x, y = _pair(shape, seed=6, dtype=torch.float64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    mask = (torch.rand((shape[0], 1, *shape[2:]), generator=torch.Generator().manual_seed(1)) > 0.4).double()
    mask = mask if use_mask else None
    assert torch.autograd.gradcheck(lambda a, b: ssim(a, b, 1.0, kernel_size=kernel_size, mask=mask), (x, y))


def _masked_reference(x, y, mask, k=11):
    """Mean of skimage's full SSIM map over the valid region, weighted by the mask there."""
    _, full = structural_similarity(
        x.double().numpy(), y.double().numpy(), data_range=1.0, use_sample_covariance=False, full=True, **GAUSS
    )
    pad = (k - 1) // 2
    crop = (slice(pad, -pad),) * x.dim()
    m = mask.double().numpy()[crop]
    return float((full[crop] * m).sum() / m.sum())


def test_mask_weights_the_map_at_window_centres():
    x, y = _pair((24, 22), seed=7)
    mask = torch.zeros(24, 22, dtype=torch.bool)
    mask[6:18, 4:15] = True
    ours = ssim(x[None, None], y[None, None], 1.0, mask=mask[None, None]).item()
    assert ours == pytest.approx(_masked_reference(x, y, mask), abs=1e-5)
    soft = torch.rand(24, 22, generator=torch.Generator().manual_seed(2))
    ours = ssim(x[None, None], y[None, None], 1.0, mask=soft).item()
    assert ours == pytest.approx(_masked_reference(x, y, soft), abs=1e-5)


def test_all_ones_mask_equals_no_mask_and_broadcasts_over_channels():
    x, y = _pair((2, 3, 15, 14), seed=8)
    ones = torch.ones(2, 1, 15, 14)
    assert ssim(x, y, 1.0, mask=ones).item() == pytest.approx(ssim(x, y, 1.0).item(), abs=1e-6)


def test_empty_mask_gives_zero_with_zero_gradient():
    x, y = _pair((1, 1, 14, 14), seed=9)
    x.requires_grad_(True)
    value = ssim(x, y, 1.0, mask=torch.zeros(1, 1, 14, 14))
    value.backward()
    assert value.item() == 0.0
    assert torch.count_nonzero(x.grad) == 0


def test_modules_match_the_functions():
    x, y = _pair((2, 1, 16, 17), seed=10)
    mask = torch.ones(2, 1, 16, 17)
    mask[:, :, :4] = 0
    assert SSIM(1.0, kernel_size=7)(x, y, mask).item() == pytest.approx(
        ssim(x, y, 1.0, kernel_size=7, mask=mask).item()
    )
    assert SSIMLoss(1.0)(x, y).item() == pytest.approx(ssim_loss(x, y, 1.0).item())
    with pytest.raises(TypeError, match="win_size"):
        SSIM(1.0, win_size=7)


def test_half_precision_inputs_are_computed_in_float32():
    x, y = _pair((1, 1, 20, 20), seed=11)
    reference = ssim(x, y, 1.0).item()
    for dtype in (torch.float16, torch.bfloat16):
        value = ssim(x.to(dtype), y.to(dtype), 1.0)
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(reference, abs=1e-2)


def test_window_weights_are_scipys_gaussian():
    w = window_weights("gaussian", 11, 1.5)
    k = np.arange(-5, 6)
    expected = np.exp(-(k**2) / (2 * 1.5**2))
    np.testing.assert_allclose(w, expected / expected.sum(), rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"pred": torch.rand(1, 1, 12, 12), "target": torch.rand(1, 1, 12, 13)}, "differ in shape"),
        ({"pred": torch.rand(12, 12), "target": torch.rand(12, 12)}, "(B, C, H, W)"),
        ({"pred": torch.rand(1, 1, 9, 30), "target": torch.rand(1, 1, 9, 30)}, ">= kernel_size 11"),
        ({"kernel_size": 4}, "odd"),
        ({"kernel": "box"}, "kernel must be one of"),
        ({"data_range": 0.0}, "data_range"),
        ({"mask": torch.ones(1, 2, 12, 12)}, "does not broadcast"),
        ({"reduction": "sum"}, "reduction"),
        ({"pred": torch.ones(1, 1, 12, 12, dtype=torch.long), "target": torch.ones(1, 1, 12, 12)}, "floating"),
    ],
)
def test_bad_inputs_raise_input_errors(kwargs, words):
    args = {"pred": torch.rand(1, 1, 12, 12), "target": torch.rand(1, 1, 12, 12), "data_range": 1.0, **kwargs}
    with pytest.raises(InputError, match=r"^ssim: ") as info:
        ssim(**args)
    assert words in str(info.value)


def test_custom_ops_pass_opcheck():
    x, y = _pair((2, 14, 13), seed=12)
    mask = torch.rand(2, 14, 13, generator=torch.Generator().manual_seed(3))
    w = window_weights("gaussian", 7, 1.5)
    x.requires_grad_(True)
    torch.library.opcheck(torch.ops.medmtl.ssim_sums.default, (x, y, mask, w, 1e-4, 9e-4, False))
    grad = torch.randn(2, 2, generator=torch.Generator().manual_seed(4))
    torch.library.opcheck(
        torch.ops.medmtl.ssim_sums_backward.default, (grad, x.detach(), y, None, w, 1e-4, 9e-4, False)
    )


def test_cs_sums_come_back_detached_when_their_gradient_is_not_wanted():
    """``cs_grad=False`` (what ``ssim`` passes, letting the eager Triton route fuse its backward) must not
    hand out CS sums whose gradient would silently be zero."""
    from medmtl.losses.ssim import ssim_per_image

    x = torch.rand(1, 1, 16, 16, requires_grad=True)
    y = torch.rand(1, 1, 16, 16)
    w = window_weights("gaussian", 11, 1.5)
    total, cs, _ = ssim_per_image(x, y, 1.0, w, None, "torch", "ssim", cs_grad=False)
    assert total.requires_grad and not cs.requires_grad
    assert ssim_per_image(x, y, 1.0, w, None, "torch", "ssim")[1].requires_grad
