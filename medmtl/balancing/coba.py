"""CoBa, the convergence balancer (Gong et al., "CoBa: Convergence Balancer for Multitask Finetuning of Large
Language Models", EMNLP 2024, arXiv:2410.06741), fed with one validation loss per task per observation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medmtl.balancing.base import BalanceOutput, Balancer, NanPolicy, check_positive, weighted_sum
from medmtl.errors import ConfigError

_TINY = 1e-12  # keeps the normalising sums away from zero when every slope is exactly flat


def window_slope(values: Tensor) -> Tensor:
    """Least-squares slope of each column of ``values`` against 0, 1, ..., N-1.

    Args:
        values: (N, T) one row per observation, N >= 2.

    Returns:
        (T,) slope in units of ``values`` per observation.
    """
    x = torch.arange(values.shape[0], dtype=values.dtype, device=values.device)
    x = x - x.mean()
    return (x[:, None] * (values - values.mean(dim=0))).sum(dim=0) / (x * x).sum()


def coba_weights(slopes: Tensor, slope_history: Tensor, max_slope_history: Tensor, tau: float) -> Tensor:
    """CoBa's task weights from the current and past convergence slopes.

    Args:
        slopes: (T,) current slope ``a_i`` of each task's normalised validation loss.
        slope_history: (M, T) the last M slopes of each task, the current one last (M >= 1).
        max_slope_history: (S,) ``max_i a_i`` at every observation since the window first filled, current
            last.
        tau: temperature of the divergence factor.

    Returns:
        (T,) weights that sum to 1:
        ``DF * RCS + (1 - DF) * ACS`` with
        ``RCS = softmax(T a / sum_j |a_j|)`` (a task converging more slowly than the others gets more weight),
        ``ACS_i = softmax_i(-M a_i / sum_m |a_i(m)|)`` (a task whose loss stopped falling, against its own
        recent history, gets less weight), and
        ``DF = min(S softmax(-tau S a_max / sum_s |a_max(s)|)[last], 1)``, a softmax over the observations:
        near 1 while every task still converges, near 0 once some task diverges, so ACS takes over.
    """
    n_tasks = slopes.shape[0]
    rcs = torch.softmax(n_tasks * slopes / slopes.abs().sum().clamp_min(_TINY), dim=0)
    m = slope_history.shape[0]
    acs = torch.softmax(-m * slopes / slope_history.abs().sum(dim=0).clamp_min(_TINY), dim=0)
    s = max_slope_history.shape[0]
    scores = -tau * s * max_slope_history / max_slope_history.abs().sum().clamp_min(_TINY)
    df = (s * torch.softmax(scores, dim=0)[-1]).clamp(max=1.0)
    return df * rcs + (1 - df) * acs


class CoBa(Balancer):
    """Weights from the slopes of the validation losses over a sliding window of observations.

    Feed one validation loss per task through :meth:`observe_epoch` (``val_losses``) after every validation
    round. Losses are normalised by each task's first observed value; the slope of each task over the last
    ``window`` observations drives :func:`coba_weights`, scaled to sum to the number of tasks. Until the
    window is full every weight is 1. Costs nothing per training step beyond the validation itself.

    Args:
        tasks: task names.
        window: observations per slope fit, and past slopes used by the absolute convergence score (>= 2).
        tau: temperature of the divergence factor (the paper's default is 5).
        nan_policy: also applies to ``val_losses``: under ``"skip"`` an observation with any non-finite
            loss is not recorded.
    """

    def __init__(
        self, tasks: Sequence[str], window: int = 5, tau: float = 5.0, nan_policy: NanPolicy = "skip"
    ):
        super().__init__(tasks, nan_policy)
        where = type(self).__name__
        if int(window) != window or window < 2:
            raise ConfigError(where, f"window must be an integer >= 2, got {window}")
        self.window = int(window)
        self.tau = check_positive(where, "tau", tau)
        n = len(self.tasks)
        self.register_buffer("weights", torch.ones(n))
        self.register_buffer("initial_val", torch.ones(n, dtype=torch.float64))
        self.register_buffer("observations", torch.zeros((), dtype=torch.long))
        # Plain lists of floats: they grow and shrink, and the checkpoint carries them as extra state.
        self._losses: list[list[float]] = []  # last `window` normalised validation losses
        self._slopes: list[list[float]] = []  # last `window` slope vectors
        self._max_slopes: list[float] = []  # max over tasks of every slope vector so far

    def weights_dict(self) -> dict[str, float]:
        return self._weights_from(self.weights)

    def observe_epoch(
        self, train_losses: Mapping[str, float] | None = None, val_losses: Mapping[str, float] | None = None
    ) -> None:
        if val_losses is None:
            return
        self._check_names(val_losses.keys())
        if len(self._finite(val_losses, what="validation loss")) != len(self.tasks):
            return
        row = torch.tensor([float(val_losses[t]) for t in self.tasks], dtype=torch.float64)
        if int(self.observations) == 0:
            self.initial_val.copy_(row.abs().clamp_min(_TINY))
        self.observations += 1
        self._losses = [*self._losses, (row / self.initial_val.cpu()).tolist()][-self.window :]
        if len(self._losses) < self.window:
            return
        slopes = window_slope(torch.tensor(self._losses, dtype=torch.float64))
        self._slopes = [*self._slopes, slopes.tolist()][-self.window :]
        self._max_slopes.append(float(slopes.max()))
        weights = coba_weights(
            slopes,
            torch.tensor(self._slopes, dtype=torch.float64),
            torch.tensor(self._max_slopes, dtype=torch.float64),
            self.tau,
        )
        self.weights.copy_(len(self.tasks) * weights.to(self.weights))

    def _balance(
        self,
        losses: dict[str, Tensor],
        *,
        shared_params: list[nn.Parameter] | None,
        shared_features: Tensor | None,
    ) -> BalanceOutput:
        weights = self.weights_dict()
        return BalanceOutput(weighted_sum(losses, weights), weights, None)

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "losses": [list(r) for r in self._losses],
            "slopes": [list(r) for r in self._slopes],
            "max_slopes": list(self._max_slopes),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._losses = [list(r) for r in state["losses"]]
        self._slopes = [list(r) for r in state["slopes"]]
        self._max_slopes = list(state["max_slopes"])
