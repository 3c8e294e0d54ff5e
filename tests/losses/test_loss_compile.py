"""torch.compile traces through the loss ops (their fake implementations and registered autograd) and
matches eager mode: ``aot_eager`` checks the tracing quickly; ``inductor`` (slow) also generates code."""

from __future__ import annotations

import pytest
import torch

from medmtl.losses import dice_ce_loss, ms_ssim, ssim_loss


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_losses_match_eager_on_cpu(backend):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 1, 24, 26, generator=g), torch.rand(2, 1, 24, 26, generator=g)
    logits = torch.randn(2, 3, 6, 7, 5, generator=g)
    labels = torch.randint(0, 3, (2, 1, 6, 7, 5), generator=g)

    def step(a, z):
        return ssim_loss(a, y, 1.0) + ms_ssim(a, y, 1.0, weights=(0.5, 0.5), kernel_size=5) + dice_ce_loss(z, labels)

    leaves = [x.clone().requires_grad_(True), logits.clone().requires_grad_(True)]
    eager = step(*leaves)
    eager_grads = torch.autograd.grad(eager, leaves)
    compiled = torch.compile(step, fullgraph=True, backend=backend)(*leaves)
    compiled_grads = torch.autograd.grad(compiled, leaves)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
