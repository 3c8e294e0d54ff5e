"""The MONAI VarNet reference behind ReconSegNet's interface: shapes, intensity units, per-sample masks, loss, the
FFT and calibration conventions it shares with MONAI, and a one-slice overfit."""

from __future__ import annotations

import pytest
import torch
from monai.apps.reconstruction.networks.nets.coil_sensitivity_model import CoilSensitivityModel
from monai.networks.blocks.fft_utils_t import fftn_centered_t, ifftn_centered_t

from medmtl.data.mni import SimulationOptions
from medmtl.data.online import SimulatedKSpaceDataset
from medmtl.errors import InputError
from medmtl.fft import fft2c, ifft2c
from medmtl.keys import Keys
from medmtl.metrics.recon import ssim
from medmtl.models.monai_varnet import MonaiVarNet
from medmtl.transforms.acs import acs_mask_from_mask
from medmtl.transforms.coils import rss_image
from medmtl.transforms.masks import make_mask

SMALL = {"num_cascades": 2, "sens_features": (4, 4, 8, 8, 8, 4), "features": (4, 4, 8, 8, 8, 4)}


def _batch(b=2, c=3, h=32, w=36):
    g = torch.Generator().manual_seed(1)
    kspace = torch.randn(b, c, h, w, 2, generator=g)
    mask = torch.zeros(b, 1, 1, w, 1)
    mask[0, ..., ::2, :] = 1
    mask[1, ..., ::4, :] = 1  # a different acceleration in the same batch
    mask[..., w // 2 - 3 : w // 2 + 3, :] = 1
    return kspace * mask, mask


def test_shapes_and_output_fields():
    torch.manual_seed(0)
    net = MonaiVarNet(**SMALL)
    kspace, mask = _batch()
    out = net(kspace, mask, mask)
    assert out.recon.shape == (2, 32, 36)
    assert out.recons == [out.recon] and out.seg_logits is None
    assert net.tasks == ("recon",)


def test_output_is_in_input_units():
    torch.manual_seed(0)
    net = MonaiVarNet(**SMALL).eval()
    kspace, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(
            net(kspace * 50, mask, mask).recon, 50 * net(kspace, mask, mask).recon, rtol=1e-4, atol=1e-4 * 50
        )


def test_samples_are_independent_of_their_batch():
    torch.manual_seed(0)
    net = MonaiVarNet(**SMALL).eval()
    kspace, mask = _batch()
    with torch.no_grad():
        both = net(kspace, mask, mask).recon
        second = net(kspace[1:], mask[1:], mask[1:]).recon
    torch.testing.assert_close(both[1:], second)


def test_two_steps_reduce_the_loss():
    torch.manual_seed(0)
    net = MonaiVarNet(**SMALL)
    kspace, mask = _batch()
    batch = {Keys.TARGET: torch.rand(2, 32, 36)}
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = net.compute_losses(net(kspace, mask, mask), batch)["recon"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# The conventions the adapter relies on, checked against MONAI's own code.


@pytest.mark.parametrize(("h", "w"), [(6, 8), (7, 9), (8, 5)])
def test_monai_ffts_are_medmtl_centred_orthonormal_ffts(h, w):
    x = torch.randn(2, 3, h, w, 2, generator=torch.Generator().manual_seed(h * w))
    torch.testing.assert_close(ifftn_centered_t(x, spatial_dims=2), ifft2c(x))
    torch.testing.assert_close(fftn_centered_t(x, spatial_dims=2), fft2c(x))


@pytest.mark.parametrize(
    ("w", "acceleration", "center_fraction"),
    # the comparison's windows (128) and validation slices (233) at 4x and 8x, and small odd/even widths
    [(128, 4.0, 0.08), (128, 8.0, 0.04), (233, 4.0, 0.08), (233, 8.0, 0.04), (37, 4.0, 0.2), (40, 4.0, 0.2)],
)
@pytest.mark.parametrize("seed", range(4))
def test_monai_calibration_window_is_medmtl_acs_region(w, acceleration, center_fraction, seed):
    """MONAI finds the calibration lines by itself (the adapter does not pass ``acs_mask``). Its run of sampled
    lines through DC is medmtl's ACS region, and the window it copies out of k-space is that run as long as W is
    even or the run odd (with an odd W and an even run, MONAI's window sits one line to the right of it)."""
    mask = torch.from_numpy(make_mask("equispaced", (1, w), acceleration, center_fraction, rng=seed))
    acs = acs_mask_from_mask(mask).flatten().nonzero().flatten().tolist()
    left, right = CoilSensitivityModel().get_fully_sampled_region(mask.reshape(1, 1, 1, w, 1).bool())
    start = (w - (right - left) + 1) // 2  # as CoilSensitivityModel.forward places the window
    assert list(range(left, right)) == list(range(start, start + right - left)) == acs


def test_monai_coil_maps_have_a_power_of_two_not_one():
    """Documents the upstream behaviour that explains the comparison row (README, "Equal-budget comparison"):
    MONAI's ``CoilSensitivityModel`` divides the real and the imaginary parts of its maps each by their own
    root-sum-of-squares over the coils, so sum_c |S_c|^2 = 2 where a SENSE model (and medmtl's simulator) has 1.
    If MONAI changes this, this test fails and the README paragraph needs updating."""
    torch.manual_seed(0)
    kspace, mask = _batch()
    model = CoilSensitivityModel(spatial_dims=2, features=(4, 4, 8, 8, 8, 4)).eval()
    with torch.no_grad():
        maps = model(kspace[:1], mask[:1].bool())
    power = (maps**2).sum(dim=(1, 4))  # sum over coils and the (real, imag) pair
    torch.testing.assert_close(power, torch.full_like(power, 2.0), rtol=1e-4, atol=1e-4)


def test_rejects_a_2d_mask_with_input_error():
    net = MonaiVarNet(**SMALL)
    kspace = torch.zeros(1, 2, 16, 16, 2)
    mask = torch.ones(1, 1, 16, 16, 1)
    with pytest.raises(InputError, match="mask"):
        net(kspace, mask, mask)


@pytest.fixture(scope="module")
def simulated_slice() -> dict[str, torch.Tensor]:
    """One simulated MNI slice at 64 x 64, 4 coils, 4x equispaced with an 8 % centre, as a batch of 1."""
    sample = SimulatedKSpaceDataset("val", options=SimulationOptions(num_coils=4, size=(64, 64)))[0]
    return {k: sample[k][None] for k in (Keys.KSPACE, Keys.MASK, Keys.TARGET)}


def _nrmse(recon: torch.Tensor, target: torch.Tensor) -> float:
    return float((recon - target).norm() / target.norm())


def test_overfits_one_simulated_slice_beyond_zero_filling(simulated_slice):
    """End to end through the adapter: the network trains and its output lands on the target's grid and units.

    One slice can be memorised, so this does not pin the conventions (a mirrored or shifted mask still fits to
    NRMSE 0.064 / 0.073 here); the FFT and calibration tests above do."""
    kspace, mask, target = (simulated_slice[k] for k in (Keys.KSPACE, Keys.MASK, Keys.TARGET))
    zero_filled = rss_image(kspace)
    torch.manual_seed(0)
    features = (8, 8, 16, 32, 64, 8)
    net = MonaiVarNet(num_cascades=2, sens_features=features, features=features)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(60):
        loss = net.compute_losses(net(kspace, mask, mask), simulated_slice)["recon"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        recon = net(kspace, mask, mask).recon
    # measured: NRMSE 0.058 against zero-filling's 0.109, SSIM 0.94 against 0.66
    assert _nrmse(recon, target) < 0.75 * _nrmse(zero_filled, target)
    assert (
        ssim(recon.double(), target.double()).item()
        > ssim(zero_filled.double(), target.double()).item() + 0.1
    )


def test_untrained_monai_varnet_starts_far_brighter_than_the_target():
    """The consequence the README names for the comparison row: at the comparison's size (128 x 128, 8 coils,
    4x, 4 cascades, MONAI's default widths) the untrained network's output is more than twice as bright as the
    target, where the zero-filled image is at about its level."""
    torch.manual_seed(0)
    sample = SimulatedKSpaceDataset("val", options=SimulationOptions(num_coils=8, size=(128, 128)))[0]
    kspace, mask, target = (sample[k][None] for k in (Keys.KSPACE, Keys.MASK, Keys.TARGET))
    net = MonaiVarNet(num_cascades=4).eval()
    with torch.no_grad():
        recon = net(kspace, mask, acs_mask_from_mask(mask[0])[None]).recon
    zero_filled = rss_image(kspace * mask)
    assert float(recon.mean() / target.mean()) > 2.0
    assert 0.5 < float(zero_filled.mean() / target.mean()) < 1.5
