"""Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from medmtl.balancing.base import BalanceOutput, Balancer, NanPolicy
from medmtl.errors import ConfigError

TaskType = Literal["regression", "classification"]

# Factor on exp(-s) for each task type, s = log(sigma^2): 1/(2 sigma^2) for a Gaussian likelihood,
# 1/sigma^2 for a softmax likelihood with temperature sigma^2.
_PRECISION_FACTOR = {"regression": 0.5, "classification": 1.0}


class UncertaintyWeighting(Balancer):
    """``loss = sum_t c_t exp(-s_t) L_t + s_t / 2`` with learned log-variances ``s_t = log sigma_t^2``.

    ``c_t`` is 1/2 for regression tasks (``L/(2 sigma^2) + log sigma``) and 1 for classification tasks
    (``L/sigma^2 + log sigma``). The log-variances are ``nn.Parameter``s, so the module's own optimiser
    trains them with the network (one backward pass, no extra cost). The reported weight of task ``t``
    is ``c_t exp(-s_t)``. With all ``s_t`` equal to a constant ``s`` and not trained, the loss is fixed
    weighting with weights ``c_t exp(-s)`` plus the constant ``T s / 2``: identical gradients.

    Args:
        tasks: task names.
        task_types: task -> ``"regression"`` or ``"classification"``; every task must be listed.
        init_log_var: initial ``s_t`` for every task.
        nan_policy: see :class:`~medmtl.balancing.base.Balancer`.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        task_types: dict[str, TaskType],
        init_log_var: float = 0.0,
        nan_policy: NanPolicy = "skip",
    ):
        super().__init__(tasks, nan_policy)
        where = type(self).__name__
        if set(task_types) != set(self.tasks):
            raise ConfigError(
                where, f"task_types must list exactly the tasks {list(self.tasks)}, got {list(task_types)}"
            )
        bad = {t: k for t, k in task_types.items() if k not in _PRECISION_FACTOR}
        if bad:
            raise ConfigError(where, f"task types must be 'regression' or 'classification', got {bad}")
        self.task_types = dict(task_types)
        # One scalar parameter per task: a task skipped for a non-finite loss then has grad None, and the
        # module's optimiser leaves it (and its momentum) alone for that step.
        self.log_vars = nn.ParameterList(nn.Parameter(torch.tensor(float(init_log_var))) for _ in self.tasks)
        # Derived from task_types, so not part of the checkpoint.
        factors = torch.tensor([_PRECISION_FACTOR[task_types[t]] for t in self.tasks])
        self.register_buffer("factors", factors, persistent=False)

    def weights_dict(self) -> dict[str, float]:
        with torch.no_grad():
            return self._weights_from(self.factors * torch.exp(-torch.stack(list(self.log_vars))))

    def _balance(
        self,
        losses: dict[str, Tensor],
        *,
        shared_params: list[nn.Parameter] | None,
        shared_features: Tensor | None,
    ) -> BalanceOutput:
        total = 0
        for name, loss in losses.items():
            i = self._index(name)
            # Only this task's own log-variance enters its term, so a skipped task's gets no gradient at all.
            log_var = self.log_vars[i].to(loss.dtype)
            total = total + self.factors[i].to(loss.dtype) * torch.exp(-log_var) * loss + 0.5 * log_var
        return BalanceOutput(total, self.weights_dict(), None)
