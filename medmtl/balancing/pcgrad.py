"""PCGrad gradient surgery (Yu, Kumar, Gupta, Levine, Hausman and Finn, "Gradient Surgery for Multi-Task
Learning", NeurIPS 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medmtl.balancing.base import BalanceOutput, Balancer, NanPolicy
from medmtl.errors import ConfigError


def project_conflicting(grads: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Project each task gradient off the normal planes of the task gradients it conflicts with.

    For each task ``i``, ``g_i`` is updated against the *original* gradients ``g_j`` of the other tasks,
    visited in a random order: where ``g_i . g_j < 0``, ``g_i -= (g_i . g_j) / |g_j|^2 g_j``.

    Args:
        grads: (T, P) one flattened gradient per task.
        generator: random source for the visiting orders (CPU generator).

    Returns:
        (T, P) the projected gradients; PCGrad's update direction is their sum over tasks.
    """
    out = grads.clone()
    sq_norms = (grads * grads).sum(dim=1)
    n = grads.shape[0]
    for i in range(n):
        for j in torch.randperm(n, generator=generator).tolist():
            if j == i or sq_norms[j] == 0:
                continue
            dot = torch.dot(out[i], grads[j])
            if dot < 0:
                out[i] -= (dot / sq_norms[j]) * grads[j]
    return out


class PCGrad(Balancer):
    """Sums the per-task gradients of the shared parameters after removing their pairwise conflicts.

    :meth:`balance` runs the backward itself and returns ``loss=None``: it takes one ``autograd.grad`` per
    task at ``shared_params`` (T backward passes through the shared part, and T copies of its gradient in
    memory), projects them with :func:`project_conflicting`, then runs one backward of ``sum_t L_t`` in
    which a hook replaces the gradient arriving at each shared parameter with its projected sum. So every
    other parameter (a task head) receives its own task's gradient, and ``.grad`` accumulates as usual
    (gradient accumulation keeps working; clipping is the caller's, after this call).

    Args:
        tasks: task names.
        seed: seed of the generator for the random projection orders (its state is checkpointed).
        nan_policy: see :class:`~medmtl.balancing.base.Balancer`.

    ``shared_params`` must be every parameter that more than one task depends on.
    """

    needs_shared = True
    does_backward = True

    def __init__(self, tasks: Sequence[str], seed: int = 0, nan_policy: NanPolicy = "skip"):
        super().__init__(tasks, nan_policy)
        self.generator = torch.Generator().manual_seed(int(seed))

    def weights_dict(self) -> dict[str, float]:
        return dict.fromkeys(self.tasks, 1.0)

    def _balance(
        self,
        losses: dict[str, Tensor],
        *,
        shared_params: list[nn.Parameter] | None,
        shared_features: Tensor | None,
    ) -> BalanceOutput:
        if not shared_params:
            raise ConfigError(type(self).__name__, "needs shared_params (the shared parameters) in balance()")
        names = list(losses)
        rows = []
        for name in names:
            grads = torch.autograd.grad(losses[name], shared_params, retain_graph=True, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if g is None else g).reshape(-1)
                        for p, g in zip(shared_params, grads)
                    ]
                )
            )
        per_task = torch.stack(rows)
        norms = per_task.double().norm(dim=1).tolist()
        merged = project_conflicting(per_task, self.generator).sum(dim=0)

        pieces = [
            piece.view_as(p)
            for p, piece in zip(shared_params, merged.split([p.numel() for p in shared_params]))
        ]
        handles = [
            p.register_hook(lambda grad, piece=piece: piece.to(grad.dtype))
            for p, piece in zip(shared_params, pieces)
        ]
        try:
            torch.autograd.backward(sum(losses.values()))
        finally:
            for handle in handles:
                handle.remove()
        return BalanceOutput(None, self.weights_dict(), dict(zip(names, norms)))

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
