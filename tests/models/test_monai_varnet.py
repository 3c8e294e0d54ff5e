"""The MONAI VarNet reference behind ReconSegNet's interface: shapes, intensity units, per-sample masks, loss."""

from __future__ import annotations

import torch

from medmtl.keys import Keys
from medmtl.models.monai_varnet import MonaiVarNet

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
