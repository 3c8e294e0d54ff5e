"""ReconSegNet: shapes per mode, sizes, coils and masks; losses; input units; feedback; a short overfit."""

from __future__ import annotations

import pytest
import torch

from medmtl.cplx import complex_abs
from medmtl.data.mni import SimulationOptions
from medmtl.data.online import SimulatedKSpaceDataset
from medmtl.errors import ConfigError, InputError
from medmtl.fft import ifft2c
from medmtl.keys import Keys
from medmtl.models import ReconSegNet
from medmtl.models.recon_seg import input_scale, ramp_weights, recon_loss
from medmtl.transforms.acs import acs_mask_from_mask
from medmtl.transforms.masks import make_mask

MODES = ("joint", "sequential", "recon", "seg_zero_filled", "seg_target")
TINY = {
    "num_cascades": 2,
    "chans": 2,
    "pools": 2,
    "sens_chans": 2,
    "sens_pools": 1,
    "num_classes": 3,
    "seg_chans": 4,
    "seg_pools": 2,
    "seg_every": 1,
}


def _batch(coils: int, h: int, w: int, pattern: str, b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random masked batch with its mask, ACS region, target and labels (no physics needed for shapes)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.from_numpy(make_mask(pattern, (h, w), 4.0, 0.2, rng=seed))[None, :, :, None]
    return {
        Keys.KSPACE: torch.randn(b, coils, h, w, 2, generator=gen) * mask,
        Keys.MASK: mask.expand(b, -1, -1, -1, -1),
        Keys.ACS: acs_mask_from_mask(mask).expand(b, -1, -1, -1, -1),
        Keys.TARGET: torch.rand(b, h, w, generator=gen),
        Keys.SEG: torch.randint(0, TINY["num_classes"], (b, h, w), generator=gen),
    }


def _run(net: ReconSegNet, batch: dict[str, torch.Tensor]):
    return net(batch[Keys.KSPACE], batch[Keys.MASK], batch[Keys.ACS], batch[Keys.TARGET])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("coils", "h", "w", "pattern"),
    [(3, 37, 29, "equispaced"), (1, 37, 29, "gaussian2d"), (2, 16, 22, "random")],
)
def test_output_shapes(mode, coils, h, w, pattern):
    torch.manual_seed(0)
    net = ReconSegNet(mode=mode, **TINY)
    out = _run(net, _batch(coils, h, w, pattern))
    k = TINY["num_classes"]
    if "recon" in net.tasks:
        assert out.recon.shape == (2, h, w)
        assert out.recon_complex.shape == (2, h, w, 2)
        assert out.sens_maps.shape == (2, coils, h, w, 2)
        assert len(out.recons) == TINY["num_cascades"]
        assert out.recons[-1] is out.recon
        assert torch.isfinite(out.recon).all()
    else:
        assert out.recon is out.recon_complex is out.sens_maps is None
        assert out.recons == []
    if "seg" in net.tasks:
        assert out.seg_logits.shape == (2, k, h, w)
        assert len(out.seg_logits_all) == (TINY["num_cascades"] if mode == "joint" else 1)
        assert out.seg_logits_all[-1] is out.seg_logits
        assert torch.isfinite(out.seg_logits).all()
    else:
        assert out.seg_logits is None
        assert out.seg_logits_all == []


@pytest.mark.parametrize(
    ("mode", "tasks"),
    [
        ("joint", {"recon", "seg"}),
        ("sequential", {"recon", "seg"}),
        ("recon", {"recon"}),
        ("seg_zero_filled", {"seg"}),
        ("seg_target", {"seg"}),
    ],
)
def test_losses_per_mode_reach_every_parameter(mode, tasks):
    torch.manual_seed(0)
    net = ReconSegNet(mode=mode, **TINY)
    batch = _batch(2, 24, 20, "equispaced")
    losses = net.compute_losses(_run(net, batch), batch)
    assert set(losses) == set(net.tasks) == tasks
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # No module without a gradient: DDP would stall on unused parameters.
    assert [n for n, p in net.named_parameters() if p.grad is None] == []


def test_segmentation_modes_build_no_reconstruction_and_vice_versa():
    assert not hasattr(ReconSegNet(mode="seg_zero_filled", **TINY), "cascades")
    assert not hasattr(ReconSegNet(mode="recon", **TINY), "seg_net")


def test_output_is_in_input_units():
    """Scaling the k-space by 7 scales the images by 7 and leaves maps and segmentation alone."""
    torch.manual_seed(0)
    net = ReconSegNet(mode="joint", **TINY)
    for p in net.parameters():  # heads start at zero; perturb so the regulariser acts
        torch.nn.init.normal_(p, std=0.05)
    batch = _batch(3, 20, 18, "equispaced")
    out = _run(net, batch)
    scaled = net(batch[Keys.KSPACE] * 7, batch[Keys.MASK], batch[Keys.ACS])
    torch.testing.assert_close(scaled.recon, 7 * out.recon, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(scaled.recon_complex, 7 * out.recon_complex, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(scaled.seg_logits, out.seg_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scaled.sens_maps, out.sens_maps, rtol=1e-4, atol=1e-5)


def test_joint_feeds_segmentation_probabilities_into_the_next_cascade():
    torch.manual_seed(0)
    net = ReconSegNet(mode="joint", **TINY)
    seen = []
    net.cascades[1].regulariser.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    out = _run(net, _batch(2, 16, 12, "equispaced"))
    (inputs,) = seen
    assert inputs.shape == (2, 1 + TINY["num_classes"], 16, 12, 2)
    torch.testing.assert_close(inputs[:, 1:, ..., 0], torch.softmax(out.seg_logits_all[0], dim=1))
    assert torch.equal(inputs[:, 1:, ..., 1], torch.zeros_like(inputs[:, 1:, ..., 1]))


@pytest.mark.parametrize(
    ("num_cascades", "seg_every", "points"), [(6, 2, 3), (5, 2, 3), (4, 3, 2), (3, 5, 1)]
)
def test_joint_segments_every_k_cascades_and_after_the_last(num_cascades, seg_every, points):
    small = {**TINY, "num_cascades": num_cascades, "seg_every": seg_every}
    out = _run(ReconSegNet(mode="joint", **small), _batch(1, 12, 12, "equispaced", b=1))
    assert len(out.seg_logits_all) == points


def test_shared_weights_use_one_regulariser():
    shared = ReconSegNet(mode="recon", shared_weights=True, **TINY)
    unshared = ReconSegNet(mode="recon", **TINY)
    assert shared.cascades[0].regulariser is shared.cascades[1].regulariser
    assert shared.cascades[0].dc is not shared.cascades[1].dc
    n_shared = sum(p.numel() for p in shared.parameters())
    assert n_shared < sum(p.numel() for p in unshared.parameters())


def test_recon_loss_compares_a_smaller_target_with_the_centre_crop():
    """fastMRI stores a 320 x 320 target beside oversampled 640 x 368 k-space."""
    torch.manual_seed(0)
    target = torch.rand(2, 16, 18)
    recon = torch.rand(2, 24, 22)
    recon[:, 4:20, 2:20] = target  # the centre crop is exact, the border is noise
    assert recon_loss([recon], target).item() == pytest.approx(0.0, abs=1e-5)
    assert recon_loss([recon[:, 3:19, 2:20]], target).item() > 0.01


def test_ramp_weights_grow_and_sum_to_one():
    w = ramp_weights(4)
    assert w == sorted(w) and len(set(w)) == 4
    assert sum(w) == pytest.approx(1.0)
    assert ramp_weights(1) == [1.0]


def test_seg_target_needs_the_target():
    net = ReconSegNet(mode="seg_target", **TINY)
    batch = _batch(2, 16, 16, "equispaced")
    with pytest.raises(InputError, match="target"):
        net(batch[Keys.KSPACE], batch[Keys.MASK], batch[Keys.ACS])


@pytest.mark.parametrize(
    ("which", "shape"),
    [
        ("kspace", (2, 3, 16, 16)),
        ("kspace", (2, 3, 16, 16, 1)),
        ("mask", (2, 1, 1, 15, 1)),
        ("mask", (2, 1, 5, 16, 1)),
        ("acs_mask", (2, 2, 1, 16, 1)),
        ("acs_mask", (3, 1, 1, 16, 1)),
    ],
)
def test_bad_input_shapes_are_input_errors(which, shape):
    net = ReconSegNet(mode="recon", **TINY)
    batch = _batch(3, 16, 16, "equispaced")
    inputs = {"kspace": batch[Keys.KSPACE], "mask": batch[Keys.MASK], "acs_mask": batch[Keys.ACS]}
    inputs[which] = torch.ones(shape)
    with pytest.raises(InputError, match=which):
        net(**inputs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"mode": "both"}, "mode"),
        ({"dc": "hard"}, "dc"),
        ({"num_cascades": 0}, "num_cascades"),
        ({"num_classes": 0}, "num_classes"),
        ({"seg_every": 0}, "seg_every"),
        ({"dc": "cg", "cg_iterations": 0}, "cg_iterations"),
    ],
)
def test_bad_configuration_is_a_config_error(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        ReconSegNet(**{**TINY, **kwargs})


@pytest.fixture(scope="module")
def simulated_batch() -> dict[str, torch.Tensor]:
    """One simulated MNI slice at 64 x 64 with 4 coils, 4x equispaced, as a batch of 1."""
    options = SimulationOptions(num_coils=4, size=(64, 64))
    sample = SimulatedKSpaceDataset("val", options=options)[0]
    batch = {k: sample[k][None] for k in (Keys.KSPACE, Keys.MASK, Keys.TARGET, Keys.SEG)}
    batch[Keys.ACS] = acs_mask_from_mask(sample[Keys.MASK])[None]
    return batch


@pytest.mark.parametrize("dc", ["gradient", "soft", "cg"])
def test_two_adam_steps_lower_the_loss_on_a_simulated_slice(dc, simulated_batch):
    batch = simulated_batch
    torch.manual_seed(0)
    net = ReconSegNet(mode="joint", **{**TINY, "dc": dc})
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)

    def losses() -> dict[str, torch.Tensor]:
        return net.compute_losses(_run(net, batch), batch)

    with torch.no_grad():
        before = losses()
    for _ in range(2):
        optimizer.zero_grad()
        sum(losses().values()).backward()
        optimizer.step()
    with torch.no_grad():
        after = losses()
    assert sum(after.values()) < 0.99 * sum(before.values())
    assert all(after[task] < before[task] for task in ("recon", "seg"))


def test_the_refiner_starts_as_the_identity_and_changes_only_the_reconstruction(simulated_batch):
    batch = simulated_batch
    torch.manual_seed(0)
    plain = ReconSegNet(mode="joint", **{**TINY, "dc": "cg"}).eval()
    refined = ReconSegNet(mode="joint", **{**TINY, "dc": "cg", "refine_chans": 2, "refine_pools": 1}).eval()
    missing = refined.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("refiner.") for k in missing)
    with torch.no_grad():
        a, b = _run(plain, batch), _run(refined, batch)
        torch.testing.assert_close(b.recon, a.recon)
        torch.testing.assert_close(b.recon_complex, a.recon_complex)
        refined.refiner.head.bias.fill_(0.05)  # adds 0.05 of the network's intensity unit everywhere
        c = _run(refined, batch)
    assert torch.equal(c.seg_logits, a.seg_logits)  # the segmentation reads the unrefined magnitude
    assert (c.recon > a.recon).float().mean() > 0.99
    torch.testing.assert_close(complex_abs(c.recon_complex), c.recon, rtol=1e-4, atol=1e-6)
    assert all(torch.equal(x, y) for x, y in zip(c.recons[:-1], a.recons[:-1], strict=True))


def test_segment_refined_segments_the_refined_magnitude_last(simulated_batch):
    batch = simulated_batch
    args = {**TINY, "dc": "cg", "refine_chans": 2, "refine_pools": 1}
    torch.manual_seed(0)
    plain = ReconSegNet(mode="joint", **args).eval()
    refined = ReconSegNet(mode="joint", segment_refined=True, **args).eval()
    refined.load_state_dict(plain.state_dict())  # the same weights: the option adds none
    with torch.no_grad():
        plain.refiner.head.bias.fill_(0.05)
        refined.refiner.head.bias.fill_(0.05)
        a, b = _run(plain, batch), _run(refined, batch)
        scale = input_scale(ifft2c(batch[Keys.KSPACE] * batch[Keys.MASK]))[:, None, None]
        expected = refined.seg_net((b.recon / scale).unsqueeze(1))
    torch.testing.assert_close(b.recon, a.recon)
    assert len(b.seg_logits_all) == len(a.seg_logits_all)
    torch.testing.assert_close(b.seg_logits_all[0], a.seg_logits_all[0])  # the fed-back one
    torch.testing.assert_close(b.seg_logits, expected)
    assert not torch.allclose(b.seg_logits, a.seg_logits)


@pytest.mark.parametrize(("mode", "refine_chans"), [("joint", 0), ("recon", 2), ("seg_target", 2)])
def test_segment_refined_needs_a_refiner_and_a_reconstruction_to_segment(mode, refine_chans):
    with pytest.raises(ConfigError, match="segment_refined"):
        ReconSegNet(mode=mode, refine_chans=refine_chans, segment_refined=True, **TINY)
