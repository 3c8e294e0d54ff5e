"""On a CUDA machine with Triton: the Triton path against the PyTorch path at real sizes, opcheck with
the CUDA kernels, and torch.compile. Skipped elsewhere (CI has no GPU; ``benchmarks/gpu.sh`` runs it)."""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytest.importorskip("triton")

from medmtl.losses import dice_ce_loss, dice_loss, ms_ssim, ssim, ssim_loss
from medmtl.losses._window import window_weights

DEV = "cuda"


def _pair(shape, seed, dtype=torch.float32):
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.rand(shape, generator=g, device=DEV)
    y = (x + 0.2 * torch.randn(shape, generator=g, device=DEV)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


def _value_and_grads(fn, *inputs):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    value = fn(*leaves)
    return value.detach(), torch.autograd.grad(value, leaves)


def _both_backends(fn, *inputs, atol=1e-5, rtol=0.0):
    """Triton against the exact answer (the PyTorch path in float64): the value within atol + rtol |ref|;
    each gradient entry within atol * max|ref gradient| + rtol |ref entry|, or, where float32 itself
    cannot get that close, within three times the largest error of the PyTorch path in float32 (sums over
    millions of pixels in another order; MS-SSIM's powers). Every comparison runs and all failures are
    reported together, so a wrong value does not hide whether the gradients agree."""
    fast, fast_grads = _value_and_grads(lambda *a: fn(*a, backend="triton"), *inputs)
    base, base_grads = _value_and_grads(lambda *a: fn(*a, backend="torch"), *inputs)
    exact, exact_grads = _value_and_grads(lambda *a: fn(*a, backend="torch"), *[t.double() for t in inputs])
    failures = []
    checks = [("value", fast, base, exact, atol)]
    for i, (got, ref, expected) in enumerate(zip(fast_grads, base_grads, exact_grads, strict=True)):
        checks.append((f"grad {i}", got, ref, expected, atol * max(expected.abs().max().item(), 1e-3)))
    for name, got, ref, expected, tol in checks:
        float32_error = (ref.double() - expected).abs().max().item()
        try:
            torch.testing.assert_close(got.double(), expected, atol=max(tol, 3 * float32_error), rtol=rtol)
        except AssertionError as error:
            failures.append(f"{name} (PyTorch float32 error {float32_error:.3g}): {error}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize(
    ("shape", "kernel_size", "masked"),
    [
        ((16, 1, 320, 320), 11, False),
        ((3, 2, 37, 41), 11, True),
        ((2, 1, 24, 30, 29), 11, True),
        ((1, 3, 50, 61), 5, False),
    ],
)
def test_ssim_triton_matches_pytorch(shape, kernel_size, masked):
    x, y = _pair(shape, seed=sum(shape))
    mask = (torch.rand((shape[0], 1, *shape[2:]), device=DEV) > 0.3) if masked else None
    _both_backends(lambda a, b, backend: ssim_loss(a, b, 1.0, kernel_size=kernel_size, mask=mask, backend=backend), x, y)


def test_ssim_triton_takes_non_contiguous_and_half_inputs():
    x, y = _pair((4, 1, 96, 80), seed=1)
    _both_backends(lambda a, b, backend: ssim(a.transpose(2, 3), b.transpose(2, 3), 1.0, backend=backend), x, y)
    _both_backends(lambda a, b, backend: ssim(a[..., ::2], b[..., ::2], 1.0, backend=backend), x, y)
    for dtype in (torch.float16, torch.bfloat16):
        xh, yh = x.to(dtype), y.to(dtype)
        fast = ssim(xh, yh, 1.0, backend="triton")
        assert fast.item() == pytest.approx(ssim(xh.float(), yh.float(), 1.0, backend="torch").item(), abs=1e-5)


def test_ms_ssim_triton_matches_pytorch():
    x, y = _pair((2, 1, 192, 200), seed=2)
    _both_backends(lambda a, b, backend: ms_ssim(a, b, 1.0, backend=backend), x, y)


@pytest.mark.parametrize(
    ("shape", "options"),
    [
        ((4, 4, 128, 128, 64), {}),
        ((3, 5, 37, 41, 7), {"include_background": False, "squared_pred": True, "class_weight": [1, 2, 3, 4, 5]}),
        ((2, 3, 33, 65), {"jaccard": True, "batch": True, "empty": "ignore"}),
    ],
)
def test_dice_ce_triton_matches_pytorch(shape, options):
    g = torch.Generator(device=DEV).manual_seed(3)
    logits = 3 * torch.randn(shape, generator=g, device=DEV)
    labels = torch.randint(0, shape[1] - 1, (shape[0], 1, *shape[2:]), generator=g, device=DEV).float()
    mask = torch.rand((shape[0], 1, *shape[2:]), generator=g, device=DEV)
    # Float32 sums over up to 4M voxels: relative agreement (the first H200 run saw 1.3e-5 relative on
    # 4.16 at the largest size, just over atol 1e-5 + rtol 1e-5).
    _both_backends(lambda z, backend: dice_ce_loss(z, labels, backend=backend, **options), logits, rtol=5e-5)
    _both_backends(lambda z, backend: dice_loss(z, labels, mask=mask, backend=backend, **options), logits, rtol=5e-5)


def test_dice_sigmoid_triton_matches_pytorch():
    g = torch.Generator(device=DEV).manual_seed(4)
    logits = torch.randn(2, 3, 40, 50, generator=g, device=DEV)
    target = (torch.rand(2, 3, 40, 50, generator=g, device=DEV) > 0.5).float()
    _both_backends(lambda z, backend: dice_ce_loss(z, target, activation="sigmoid", backend=backend), logits)


def test_custom_ops_pass_opcheck_with_the_triton_kernels():
    x, y = _pair((2, 33, 29), seed=5)
    mask = torch.rand(2, 33, 29, device=DEV)
    w = window_weights("gaussian", 11, 1.5)
    x.requires_grad_(True)
    torch.library.opcheck(torch.ops.medmtl.ssim_sums.default, (x, y, mask, w, 1e-4, 9e-4, True))
    grad = torch.randn(2, 2, device=DEV)
    torch.library.opcheck(torch.ops.medmtl.ssim_sums_backward.default, (grad, x.detach(), y, None, w, 1e-4, 9e-4, True))
    logits = torch.randn(2, 3, 300, device=DEV, requires_grad=True)
    labels = torch.randint(0, 3, (2, 300), device=DEV)
    torch.library.opcheck(torch.ops.medmtl.dice_sums.default, (logits, labels, None, None, "softmax", False, True, True))


def test_torch_compile_runs_the_triton_ops():
    x, y = _pair((2, 1, 64, 72), seed=6)
    logits = torch.randn(2, 3, 16, 16, 8, device=DEV)
    labels = torch.randint(0, 3, (2, 1, 16, 16, 8), device=DEV)

    def step(a, b, z):
        return ssim_loss(a, b, 1.0, backend="triton") + dice_ce_loss(z, labels, backend="triton")

    eager, eager_grads = _value_and_grads(step, x, y, logits)
    compiled, compiled_grads = _value_and_grads(torch.compile(step, fullgraph=True), x, y, logits)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
