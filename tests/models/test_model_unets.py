"""The U-Net skeleton and its complex and real flavours: any size, exact pooling, zero start."""

from __future__ import annotations

import pytest
import torch

from medmtl.models.complex_unet import complex_avg_pool, complex_unet
from medmtl.models.seg_unet import seg_unet
from medmtl.models.unet import crop_to, pad_to_multiple


@pytest.mark.parametrize("pools", [0, 1, 3])
@pytest.mark.parametrize("size", [(37, 29), (8, 8), (1, 5)])
def test_complex_unet_keeps_any_size(pools, size):
    torch.manual_seed(0)
    net = complex_unet(3, 2, chans=2, pools=pools)
    out = net(torch.randn(2, 3, *size, 2))
    assert out.shape == (2, 2, *size, 2)


@pytest.mark.parametrize("pools", [0, 2])
@pytest.mark.parametrize("size", [(37, 29), (16, 20)])
def test_seg_unet_gives_logits_at_any_size(pools, size):
    torch.manual_seed(0)
    out = seg_unet(1, 4, chans=4, pools=pools)(torch.rand(2, 1, *size))
    assert out.shape == (2, 4, *size)
    assert torch.isfinite(out).all()


def test_complex_unet_starts_at_zero_and_learns():
    """Its head starts at zero (a residual refiner starts as the identity), but gradients reach it."""
    torch.manual_seed(0)
    net = complex_unet(1, 1, chans=2, pools=2)
    x = torch.randn(1, 1, 12, 10, 2)
    out = net(x)
    assert torch.equal(out, torch.zeros_like(out))
    (out * torch.randn_like(out)).sum().backward()
    assert net.head.weight.grad.abs().sum() > 0


def test_complex_avg_pool_is_the_block_mean():
    x = torch.randn(2, 3, 8, 12, 2)
    expected = x.reshape(2, 3, 2, 4, 3, 4, 2).mean(dim=(3, 5))
    torch.testing.assert_close(complex_avg_pool(x, 4), expected)


@pytest.mark.parametrize("tail", [(), (2,)])
def test_pad_then_crop_round_trips(tail):
    x = torch.randn(2, 3, 13, 7, *tail)
    padded = pad_to_multiple(x, 8)
    assert padded.shape == (2, 3, 16, 8, *tail)
    assert torch.equal(padded[:, :, 13:], torch.zeros_like(padded[:, :, 13:]))
    assert torch.equal(crop_to(padded, 13, 7), x)


def test_complex_unet_runs_the_pair_layers_on_the_stacked_layout():
    """ComplexUNet's stacked walk is the layer-by-layer pair-layout U-Net, values and gradients, with
    convolutions of both forms (Gauss from 32 input channels on CPU) and an odd size (padding)."""
    from medmtl.models.unet import UNet

    torch.manual_seed(0)
    net = complex_unet(3, 2, chans=8, pools=3)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 3, 37, 30, 2, requires_grad=True)
    got, expected = net(x), UNet.forward(net, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    up = torch.randn(expected.shape)
    for a, b in zip(torch.autograd.grad(got, [x, *net.parameters()], up),
                    torch.autograd.grad(expected, [x, *net.parameters()], up), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
