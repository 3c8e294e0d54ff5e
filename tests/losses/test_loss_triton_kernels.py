"""The Triton kernels, run by Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, as
``make test`` sets), against the PyTorch path: values and gradients to 1e-5 on odd sizes, 3D,
masks, half inputs, non-contiguous inputs and launch shapes that split images over many programs.

The interpreter runs each Triton op as a NumPy call, so the sizes are tiny.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 to run Triton kernels on CPU", allow_module_level=True)
pytest.importorskip("triton")

from medmtl.losses import _dice_torch, _ssim_torch, _triton_dice, _triton_ssim
from medmtl.losses._window import ssim_constants, window_weights

C1, C2 = ssim_constants(1.0)


def _images(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    y = (x + 0.3 * torch.rand(shape, generator=g)).clamp(0, 1)
    mask = torch.rand(shape, generator=g)
    return x, y, mask


def _compare_ssim(x, y, mask, window, **launch):
    """Triton vs PyTorch: per-image means of SSIM and CS, and the gradients of a loss built on them."""
    k = len(window)
    count = torch.tensor([float((torch.tensor(x.shape[1:]) - k + 1).prod())])
    got = _triton_ssim.ssim_sums(x, y, mask, window, C1, C2, **launch)
    expected = _ssim_torch.ssim_sums(x.float(), y.float(), mask, window, C1, C2)
    torch.testing.assert_close(got / count, expected / count, atol=1e-5, rtol=0)
    grad = torch.randn(x.shape[0], 2, generator=torch.Generator().manual_seed(1)) / count
    dx, dy = _triton_ssim.ssim_sums_backward(grad, x, y, mask, window, C1, C2, **launch)
    ex, ey = _ssim_torch.ssim_sums_backward(grad, x.float(), y.float(), mask, window, C1, C2)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    torch.testing.assert_close(dx.float(), ex, atol=1e-5, rtol=0)
    torch.testing.assert_close(dy.float(), ey, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("shape", "kernel", "size", "masked", "launch"),
    [
        ((1, 23, 19), "gaussian", 11, False, {}),
        ((2, 17, 15), "gaussian", 11, True, {"block_s": 4, "block_w": 16}),
        ((1, 20, 17), "uniform", 7, True, {"block_s": 4}),
        ((1, 12, 11), "gaussian", 3, False, {"block_w": 16}),
    ],
)
def test_ssim_2d_matches_pytorch(shape, kernel, size, masked, launch):
    x, y, mask = _images(shape, seed=sum(shape))
    _compare_ssim(x, y, mask if masked else None, window_weights(kernel, size, 1.5), **launch)


def test_ssim_3d_matches_pytorch():
    x, y, mask = _images((1, 8, 6, 10), seed=2)
    _compare_ssim(x, y, mask, window_weights("gaussian", 3, 1.5), block_s=4, block_w=16)


@pytest.mark.slow
def test_ssim_3d_with_the_default_window_matches_pytorch():
    x, y, mask = _images((1, 12, 11, 13), seed=3)
    _compare_ssim(x, y, mask, window_weights("gaussian", 11, 1.5), block_s=8)


@pytest.mark.parametrize(
    ("shape", "size", "launch", "masked"),
    [
        ((2, 17, 15), 11, {"block_s": 4, "block_w": 16}, True),
        ((1, 23, 19), 11, {}, False),
        ((1, 8, 6, 10), 3, {"block_s": 4}, True),
    ],
)
def test_fused_forward_and_maps_match_pytorch(shape, size, launch, masked):
    """``ssim_sums_and_maps`` + ``backward_from_maps`` (the eager route when only the SSIM sums are
    differentiated): the forward's sums, and the gradient for an upstream gradient (g, 0)."""
    x, y, mask = _images(shape, seed=sum(shape) + 1)
    mask = mask if masked else None
    window = window_weights("gaussian", size, 1.5)
    sums, maps = _triton_ssim.ssim_sums_and_maps(x, y, mask, window, C1, C2, **launch)
    torch.testing.assert_close(sums, _triton_ssim.ssim_sums(x, y, mask, window, C1, C2, **launch), atol=0, rtol=0)
    count = float((torch.tensor(x.shape[1:]) - size + 1).prod())
    grad = torch.randn(x.shape[0], 2, generator=torch.Generator().manual_seed(2)) / count
    grad[:, 1] = 0
    dx, dy = _triton_ssim.backward_from_maps(grad, maps, x, y, window, **launch)
    ex, ey = _ssim_torch.ssim_sums_backward(grad, x, y, mask, window, C1, C2)
    torch.testing.assert_close(dx, ex, atol=1e-5, rtol=0)
    torch.testing.assert_close(dy, ey, atol=1e-5, rtol=0)


def test_ssim_non_contiguous_and_half_inputs_match_pytorch():
    x, y, mask = _images((1, 19, 23), seed=4)
    window = window_weights("gaussian", 11, 1.5)
    _compare_ssim(x.transpose(1, 2), y.transpose(1, 2), mask.transpose(1, 2), window, block_s=6)
    wide_x, wide_y, _ = _images((1, 23, 38), seed=5)
    _compare_ssim(wide_x[:, :, ::2], wide_y[:, :, ::2], None, window)
    _compare_ssim(x.half(), y.half(), None, window)


DICE_CASES = [
    # activation, labels dtype (None: dense targets), weights, class weights, squared, with CE
    ("softmax", torch.int64, False, False, False, True),
    ("softmax", torch.float32, True, True, True, True),
    ("softmax", torch.uint8, False, True, False, False),
    ("softmax", None, True, True, False, True),
    ("sigmoid", None, True, True, True, True),
    ("sigmoid", None, False, False, False, False),
    ("none", torch.int32, True, False, True, False),
]


@pytest.mark.parametrize(("activation", "labels", "weighted", "class_weighted", "squared", "with_ce"), DICE_CASES)
@pytest.mark.parametrize(("channels", "launch"), [(3, {}), (5, {"block": 16, "iters": 2})])
def test_dice_matches_pytorch(activation, labels, weighted, class_weighted, squared, with_ce, channels, launch):
    g = torch.Generator().manual_seed(channels)
    b, v = 2, 173
    logits = 3 * torch.randn(b, v, channels, generator=g).transpose(1, 2)  # non-contiguous (B, C, V)
    if activation == "none":
        logits = torch.softmax(logits, 1)
    if labels is None:
        target = torch.rand(b, channels, v, generator=g)
    else:
        target = torch.randint(0, channels, (b, v), generator=g).to(labels)
    weight = torch.rand(b, v, generator=g) if weighted else None
    cw = torch.rand(channels, generator=g) + 0.5 if class_weighted else None
    args = (logits, target, weight, cw, activation, squared, with_ce)
    sums, ce = _triton_dice.dice_sums(*args, **launch)
    ref_sums, ref_ce = _dice_torch.dice_sums(logits, target.float() if labels is None else target, *args[2:])
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-5)
    if with_ce:
        torch.testing.assert_close(ce, ref_ce, rtol=1e-5, atol=1e-5)
    grads = (torch.randn(b, channels, 3, generator=g), torch.randn(b, 2, generator=g))
    dz = _triton_dice.dice_sums_backward(*grads, *args, **launch)
    ref = _dice_torch.dice_sums_backward(*grads, *args)
    torch.testing.assert_close(dz, ref, rtol=0, atol=1e-5)


def test_dice_single_channel_sigmoid_matches_pytorch():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 1, 50, generator=g)
    target = (torch.rand(2, 1, 50, generator=g) > 0.5).float()
    args = (logits, target, None, torch.tensor([2.5]), "sigmoid", False, True)
    for got, expected in zip(_triton_dice.dice_sums(*args), _dice_torch.dice_sums(*args), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    grads = (torch.randn(2, 1, 3, generator=g), torch.randn(2, 2, generator=g))
    dz = _triton_dice.dice_sums_backward(*grads, *args)
    torch.testing.assert_close(dz, _dice_torch.dice_sums_backward(*grads, *args), rtol=0, atol=1e-5)


def test_eager_autograd_functions_match_the_custom_ops():
    """The eager route (``_ssim_op._TritonSums``, ``_dice_op._TritonSums``: the kernels without the custom
    op's dispatch) gives the custom op's values and gradients (run here on CPU tensors by the interpreter)."""
    from medmtl.losses import _dice_op, _ssim_op

    x, y, mask = _images((2, 17, 19), seed=8)
    window = window_weights("gaussian", 11, 1.5)
    leaves = [x.clone().requires_grad_(True), y.clone().requires_grad_(True)]
    refs = [x.clone().requires_grad_(True), y.clone().requires_grad_(True)]
    grad = torch.randn(2, 2, generator=torch.Generator().manual_seed(9))
    expected = torch.ops.medmtl.ssim_sums(*refs, mask, window, C1, C2, False)
    expected_grads = torch.autograd.grad(expected, refs, grad)
    # fuse=True puts the backward's first pass into the forward: exact for a gradient on column 0 only.
    only_ssim = grad * torch.tensor([1.0, 0.0])
    expected_fused = torch.autograd.grad(torch.ops.medmtl.ssim_sums(*refs, mask, window, C1, C2, False), refs, only_ssim)
    for fuse, upstream, reference in [(False, grad, expected_grads), (True, only_ssim, expected_fused)]:
        got = _ssim_op._TritonSums.apply(*leaves, mask, window, C1, C2, fuse)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
        for a, b in zip(torch.autograd.grad(got, leaves, upstream), reference, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)

    g = torch.Generator().manual_seed(10)
    logits = torch.randn(2, 3, 90, generator=g)
    labels = torch.randint(0, 3, (2, 90), generator=g)
    weight = torch.rand(2, 90, generator=g)
    z, z_ref = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    args = (labels, weight, None, "softmax", False, True)
    got = _dice_op._TritonSums.apply(z, *args)
    expected = torch.ops.medmtl.dice_sums(z_ref, *args, False)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    grads = (torch.randn(2, 3, 3, generator=g), torch.randn(2, 2, generator=g))
    torch.testing.assert_close(
        torch.autograd.grad(got, z, grads)[0], torch.autograd.grad(expected, z_ref, grads)[0], atol=1e-5, rtol=0
    )


def test_eager_functions_refuse_second_order_gradients():
    """Their backwards are kernels: differentiating them again must raise, not drop the term silently."""
    from medmtl.losses import _dice_op, _ssim_op

    x, y, _ = _images((1, 15, 14), seed=9)
    x.requires_grad_(True)
    out = _ssim_op._TritonSums.apply(x, y, None, window_weights("gaussian", 11, 1.5), C1, C2, True)
    assert torch.autograd.grad(out[:, 0].sum(), x, retain_graph=True)[0].shape == x.shape  # first order: fine
    with pytest.raises(RuntimeError, match=r"^ssim: the Triton kernels have no second-order gradient"):
        torch.autograd.grad(out[:, 0].sum(), x, create_graph=True)
    z = torch.randn(1, 3, 40, requires_grad=True)
    sums, _ = _dice_op._TritonSums.apply(z, torch.randint(0, 3, (1, 40)), None, None, "softmax", False, False)
    with pytest.raises(RuntimeError, match=r"^dice: the Triton kernels have no second-order gradient"):
        torch.autograd.grad(sums.sum(), z, create_graph=True)
