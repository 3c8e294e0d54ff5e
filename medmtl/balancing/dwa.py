"""Dynamic Weight Average (Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention",
CVPR 2019)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from medmtl.balancing.base import BalanceOutput, Balancer, NanPolicy, check_positive, weighted_sum


class DynamicWeightAverage(Balancer):
    """Weights from the rate at which each task's mean training loss fell over the last two epochs.

    ``w_t = T softmax_t(r_t / temperature)`` with ``r_t = L_t(e-1) / L_t(e-2)``, the mean training losses of
    the last two epochs handed to :meth:`observe_epoch`; a task whose loss falls more slowly gets more
    weight. Until two epochs have been observed every weight is 1. Costs nothing per step.

    Args:
        tasks: task names.
        temperature: softmax temperature; larger values flatten the weights towards 1.
        nan_policy: also applies to the epoch losses: under ``"skip"`` an epoch with any non-finite
            mean loss is not recorded.
    """

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0, nan_policy: NanPolicy = "skip"):
        super().__init__(tasks, nan_policy)
        self.temperature = check_positive(type(self).__name__, "temperature", temperature)
        n = len(self.tasks)
        # Row 0: epoch e-2, row 1: epoch e-1.
        self.register_buffer("history", torch.zeros(2, n, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(n))

    def weights_dict(self) -> dict[str, float]:
        return self._weights_from(self.weights)

    def observe_epoch(
        self, train_losses: Mapping[str, float] | None = None, val_losses: Mapping[str, float] | None = None
    ) -> None:
        if train_losses is None:
            return
        self._check_names(train_losses.keys())
        finite = self._finite(train_losses, what="mean training loss")
        if len(finite) != len(self.tasks):
            return  # a partial epoch record would make the next ratio meaningless
        row = torch.tensor(
            [float(train_losses[t]) for t in self.tasks], dtype=torch.float64, device=self.history.device
        )
        self.history[0] = self.history[1]
        self.history[1] = row
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:
            # A zero loss in epoch e-2 means the task is solved: ratio 0, the smallest weight.
            ratio = self.history[1] / self.history[0].clamp_min(torch.finfo(torch.float64).tiny)
            ratio = torch.where(self.history[0] > 0, ratio, torch.zeros_like(ratio))
            weights = len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0)
            self.weights.copy_(weights.to(self.weights.dtype))

    def _balance(
        self,
        losses: dict[str, Tensor],
        *,
        shared_params: list[nn.Parameter] | None,
        shared_features: Tensor | None,
    ) -> BalanceOutput:
        weights = self.weights_dict()
        return BalanceOutput(weighted_sum(losses, weights), weights, None)
