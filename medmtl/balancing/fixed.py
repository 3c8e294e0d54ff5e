"""Constant task weights from the configuration."""

from __future__ import annotations

from torch import Tensor, nn

from medmtl.balancing.base import BalanceOutput, Balancer, NanPolicy, check_positive, weighted_sum


class FixedWeights(Balancer):
    """``loss = sum_t w_t * L_t`` with constant ``w_t``.

    Args:
        weights: task -> positive weight. None weighs every task 1.0 and accepts any task names.
        nan_policy: see :class:`~medmtl.balancing.base.Balancer`.
    """

    def __init__(self, weights: dict[str, float] | None = None, nan_policy: NanPolicy = "skip"):
        super().__init__(None if weights is None else list(weights), nan_policy)
        self.fixed: dict[str, float] | None = (
            None
            if weights is None
            else {
                name: check_positive(type(self).__name__, f"weight of {name!r}", w)
                for name, w in weights.items()
            }
        )
        # With weights=None the task names are only known from the losses; keep the last set for reporting.
        self._seen: tuple[str, ...] = ()

    def weights_dict(self) -> dict[str, float]:
        if self.fixed is not None:
            return dict(self.fixed)
        return dict.fromkeys(self._seen, 1.0)

    def balance(self, losses, *, shared_params=None, shared_features=None) -> BalanceOutput:
        if self.fixed is None:
            self._seen = tuple(losses)
        return super().balance(losses, shared_params=shared_params, shared_features=shared_features)

    def _balance(
        self,
        losses: dict[str, Tensor],
        *,
        shared_params: list[nn.Parameter] | None,
        shared_features: Tensor | None,
    ) -> BalanceOutput:
        weights = self.weights_dict()
        return BalanceOutput(weighted_sum(losses, weights), weights, None)
