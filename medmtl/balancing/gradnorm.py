"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from medmtl.balancing.base import BalanceOutput, Balancer, NanPolicy, check_positive
from medmtl.errors import ConfigError

# Lower bound on a weight after an optimiser step, relative to an equal share (1.0): a weight that reached
# zero could never grow again, because its weighted gradient norm (the quantity GradNorm steers) is zero.
_MIN_WEIGHT = 1e-3


class GradNorm(Balancer):
    """Learns task weights so that the weighted task-gradient norms follow each task's training rate.

    Every step, with ``g_t`` the L2 norm of the unweighted gradient of ``L_t`` at the shared point,
    ``G_t = w_t g_t``, ``r_t = (L_t / L_t(0)) / mean_j (L_j / L_j(0))`` and the target
    ``G*_t = mean_j(G_j) r_t**alpha`` (held constant), the weights take one step of their own Adam
    optimiser on ``sum_t |G_t - G*_t|`` (gradient ``sign(G_t - G*_t) g_t``), are floored at a small
    positive value, and are rescaled to sum to the number of tasks. The step's loss ``sum_t w_t L_t``
    uses the weights from before the update; its backward is the caller's.

    The weights are a buffer, not a parameter, so the module's optimiser never sees them.

    Cost: one extra ``autograd.grad`` per task. With ``grad_at="features"`` it runs only through the
    task heads (cheap); with ``grad_at="params"`` it runs through everything above ``shared_params``,
    which should then be the last shared layer's parameters, as in the paper.

    Args:
        tasks: task names.
        alpha: asymmetry; larger values pull lagging tasks harder. 0 equalises gradient norms.
        lr: learning rate of the weights' Adam optimiser.
        grad_at: ``"features"`` takes ``g_t`` at ``shared_features`` in :meth:`balance`, ``"params"``
            at ``shared_params``.
        nan_policy: see :class:`~medmtl.balancing.base.Balancer`; a skipped task's weight and optimiser
            state do not move that step, and the other weights keep their previous sum.
    """

    needs_shared = True

    def __init__(
        self,
        tasks: Sequence[str],
        alpha: float = 1.5,
        lr: float = 0.025,
        grad_at: Literal["features", "params"] = "features",
        nan_policy: NanPolicy = "skip",
    ):
        super().__init__(tasks, nan_policy)
        where = type(self).__name__
        if grad_at not in ("features", "params"):
            raise ConfigError(where, f"grad_at must be 'features' or 'params', got {grad_at!r}")
        self.alpha = float(alpha)
        if not self.alpha >= 0:
            raise ConfigError(where, f"alpha must be >= 0, got {alpha}")
        self.lr = check_positive(where, "lr", lr)
        self.grad_at = grad_at
        n = len(self.tasks)
        self.register_buffer("weights", torch.ones(n))
        self.register_buffer("initial_losses", torch.ones(n))
        self.register_buffer("has_initial", torch.zeros(n, dtype=torch.bool))
        # One 0-dim leaf per task, so that a skipped task (grad None) leaves its Adam state untouched.
        # They are rebuilt from the buffer when it moves device; the optimiser state travels in extra state.
        self._leaves: list[Tensor] = []
        self._optimizer: torch.optim.Adam | None = None
        self._pending_state: dict[str, Any] | None = None

    def weights_dict(self) -> dict[str, float]:
        return self._weights_from(self.weights)

    def _balance(
        self,
        losses: dict[str, Tensor],
        *,
        shared_params: list[nn.Parameter] | None,
        shared_features: Tensor | None,
    ) -> BalanceOutput:
        at = shared_features if self.grad_at == "features" else shared_params
        if at is None:
            raise ConfigError(
                type(self).__name__, f"grad_at={self.grad_at!r} needs shared_{self.grad_at} in balance()"
            )
        inputs = [at] if isinstance(at, Tensor) else at
        names = list(losses)
        idx = torch.tensor([self._index(n) for n in names], device=self.weights.device)
        used = self.weights.clone()

        norms = []
        for name in names:
            grads = torch.autograd.grad(losses[name], inputs, retain_graph=True, allow_unused=True)
            sq = sum(
                (g.detach().double().pow(2).sum() for g in grads if g is not None),
                start=torch.zeros((), dtype=torch.float64, device=self.weights.device),
            )
            norms.append(sq.sqrt().to(self.weights.device))
        g = torch.stack(norms)
        loss_now = torch.stack([losses[n].detach().double().to(self.weights.device) for n in names])

        new = ~self.has_initial[idx]
        self.initial_losses[idx[new]] = loss_now[new].to(self.initial_losses.dtype)
        self.has_initial[idx[new]] = True
        self._step(idx, g, loss_now)

        total = sum(used[self._index(n)].to(losses[n].dtype) * losses[n] for n in names)
        return BalanceOutput(total, self._weights_from(used), {n: float(v) for n, v in zip(names, g)})

    def _step(self, idx: Tensor, g: Tensor, loss_now: Tensor) -> None:
        """One optimiser step on the weights of the tasks in ``idx`` (the finite ones)."""
        w = self.weights[idx].double()
        ratio = loss_now / self.initial_losses[idx].double().clamp_min(torch.finfo(torch.float64).tiny)
        rate = ratio / ratio.mean().clamp_min(torch.finfo(torch.float64).tiny)
        weighted = w * g
        target = weighted.mean() * rate.pow(self.alpha)
        grad = torch.sign(weighted - target) * g

        optimizer = self._get_optimizer()
        with torch.no_grad():
            for leaf, value in zip(self._leaves, self.weights):
                leaf.grad = None
                leaf.copy_(value)  # the buffer is the truth (load_state_dict writes it)
        for k, i in enumerate(idx.tolist()):
            self._leaves[i].grad = grad[k].to(self._leaves[i].dtype).reshape(())
        optimizer.step()

        stepped = (
            torch.stack([self._leaves[i].detach() for i in idx.tolist()]).double().clamp_min(_MIN_WEIGHT)
        )
        # Renormalise only the stepped weights, so that a skipped task's weight stays where it was, to what
        # the others leave of the number of tasks (not to their previous sum, which would let rounding drift).
        others = self.weights.double().sum() - w.sum()
        stepped = stepped * ((len(self.tasks) - others) / stepped.sum())
        self.weights[idx] = stepped.to(self.weights.dtype)

    def _get_optimizer(self) -> torch.optim.Adam:
        if self._optimizer is None or self._leaves[0].device != self.weights.device:
            state = self._optimizer.state_dict() if self._optimizer is not None else self._pending_state
            self._leaves = [w.detach().clone() for w in self.weights]
            self._optimizer = torch.optim.Adam(self._leaves, lr=self.lr)
            if state is not None:
                self._optimizer.load_state_dict(copy.deepcopy(state))
            self._pending_state = None
        return self._optimizer

    def get_extra_state(self) -> dict[str, Any]:
        state = self._optimizer.state_dict() if self._optimizer is not None else self._pending_state
        return {"optimizer": copy.deepcopy(state)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._optimizer = None
        self._leaves = []
        self._pending_state = copy.deepcopy(state["optimizer"])
