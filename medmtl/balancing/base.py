"""The balancer interface: per-task losses in, one loss to step on (or a finished backward) out.

A ``MultitaskModule`` holds one :class:`Balancer` as a submodule and, every training step, calls::

    out = balancer.balance(losses, shared_params=..., shared_features=...)
    if out.loss is not None:          # balancers with ``does_backward`` return None: .grad is already set
        manual_or_automatic_backward(out.loss)
    log(out.weights, out.grad_norms)

and, after every epoch (or every validation round),
``balancer.observe_epoch(train_losses=..., val_losses=...)``.

Weights are reported so that equal weighting reads 1.0 for every task (they sum to the number of tasks
for the methods that normalise). Non-finite task losses follow ``nan_policy``: ``"skip"`` drops the task
from that step and leaves every weight and history untouched by it; ``"raise"`` raises
:class:`NonFiniteLossError`. Every piece of internal state is a buffer, a parameter or extra state, so a
checkpoint restores a balancer exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from medmtl.errors import ConfigError, InputError

NanPolicy = Literal["skip", "raise"]


class NonFiniteLossError(InputError):
    """A task loss (or an epoch loss given to ``observe_epoch``) was NaN or infinite, with ``nan_policy="raise"``."""


@dataclass(frozen=True)
class BalanceOutput:
    """What one :meth:`Balancer.balance` call hands back to the training step.

    Attributes:
        loss: scalar tensor to call backward on; None when the balancer already ran the backward itself
            (``does_backward``) or when every task loss was non-finite under ``nan_policy="skip"``.
        weights: task -> weight used for this step (dimensionless; equal weighting reads 1.0).
        grad_norms: task -> L2 norm of the unweighted task gradient where the method computes one
            (GradNorm, PCGrad), else None.
    """

    loss: Tensor | None
    weights: dict[str, float]
    grad_norms: dict[str, float] | None = None


class Balancer(nn.Module):
    """Base of every loss-balancing method.

    Subclasses implement :meth:`_balance` on the finite losses only, and :meth:`weights_dict`; the base
    checks task names and shapes, applies the NaN policy and counts skipped steps.

    Args:
        tasks: task names in a fixed order (that order indexes every per-task buffer). ``None`` accepts any
            task names (only for stateless methods such as equal fixed weights).
        nan_policy: ``"skip"`` or ``"raise"`` for a task loss that is NaN or infinite.
    """

    #: needs ``shared_params`` or ``shared_features`` in :meth:`balance`.
    needs_shared: ClassVar[bool] = False
    #: runs the backward itself and sets ``.grad``; :meth:`balance` then returns ``loss=None``.
    does_backward: ClassVar[bool] = False

    def __init__(self, tasks: Sequence[str] | None, nan_policy: NanPolicy = "skip"):
        super().__init__()
        where = type(self).__name__
        if nan_policy not in ("skip", "raise"):
            raise ConfigError(where, f"nan_policy must be 'skip' or 'raise', got {nan_policy!r}")
        if tasks is not None:
            tasks = tuple(tasks)
            if not tasks or len(set(tasks)) != len(tasks) or not all(isinstance(t, str) and t for t in tasks):
                raise ConfigError(where, f"tasks must be distinct non-empty names, got {list(tasks)}")
        self.tasks: tuple[str, ...] | None = tasks
        self.nan_policy: NanPolicy = nan_policy
        # balance() calls, steps where every loss was non-finite, and single task losses dropped.
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("dropped_losses", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ interface
    def balance(
        self,
        losses: Mapping[str, Tensor],
        *,
        shared_params: Sequence[nn.Parameter] | None = None,
        shared_features: Tensor | None = None,
    ) -> BalanceOutput:
        """Combine one step's task losses.

        Args:
            losses: task -> scalar loss tensor (any float dtype, attached to the graph).
            shared_params: parameters more than one task depends on (what exactly depends on the method;
                see its docstring). Only read where ``needs_shared``.
            shared_features: the shared representation the task heads read, any shape (e.g. (B, C, H, W)).
                Only read where ``needs_shared``.
        """
        self._check_names(losses.keys())
        for name, value in losses.items():
            if not isinstance(value, Tensor) or value.numel() != 1:
                raise InputError(type(self).__name__, f"loss of task {name!r} must be a scalar tensor")
        self.steps += 1
        finite = self._finite(losses, what="loss")
        if self.needs_shared and shared_params is None and shared_features is None:
            raise ConfigError(type(self).__name__, "needs shared_params or shared_features in balance()")
        if not finite:
            self.skipped_steps += 1
            return BalanceOutput(None, self.weights_dict(), None)
        self.dropped_losses += len(losses) - len(finite)
        return self._balance(
            {name: value.reshape(()) for name, value in finite.items()},
            shared_params=None if shared_params is None else list(shared_params),
            shared_features=shared_features,
        )

    def observe_epoch(
        self,
        train_losses: Mapping[str, float] | None = None,
        val_losses: Mapping[str, float] | None = None,
    ) -> None:
        """Record epoch-level losses (mean training loss, validation loss per task). A no-op by default.

        Either argument may be None when it is not available this epoch; methods that need it then keep
        their state as it is.
        """

    def weights_dict(self) -> dict[str, float]:
        """Task -> current weight (the weight the next step would use)."""
        raise NotImplementedError

    def _balance(
        self,
        losses: dict[str, Tensor],
        *,
        shared_params: list[nn.Parameter] | None,
        shared_features: Tensor | None,
    ) -> BalanceOutput:
        """Combine the finite losses (a non-empty subset of the tasks, each a 0-dim tensor)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for subclasses
    def _check_names(self, names) -> None:
        names = set(names)
        if self.tasks is not None and names != set(self.tasks):
            raise InputError(
                type(self).__name__, f"got losses for tasks {sorted(names)}, expected {sorted(self.tasks)}"
            )
        if not names:
            raise InputError(type(self).__name__, "got no task losses")

    def _finite(self, values: Mapping[str, Tensor | float], *, what: str) -> dict:
        """The finite entries of ``values``; raises under ``nan_policy="raise"`` naming the first bad task."""
        if not values:
            return {}
        names = list(values)
        first = values[names[0]]
        device = first.device if isinstance(first, Tensor) else None
        # One host sync for all tasks: the selection must be known on the host to build the graph.
        stacked = torch.stack(
            [torch.as_tensor(values[n], device=device).detach().float().reshape(()) for n in names]
        )
        flags = torch.isfinite(stacked).tolist()
        bad = [n for n, ok in zip(names, flags) if not ok]
        if bad and self.nan_policy == "raise":
            value = float(torch.as_tensor(values[bad[0]]).detach().float())
            raise NonFiniteLossError(
                type(self).__name__,
                f"{what} of task {bad[0]!r} is {value} at step {int(self.steps)}"
                + (f" (also non-finite: {bad[1:]})" if len(bad) > 1 else "")
                + "; set nan_policy='skip' to drop such a task for that step",
            )
        return {n: values[n] for n, ok in zip(names, flags) if ok}

    def _index(self, name: str) -> int:
        assert self.tasks is not None
        return self.tasks.index(name)

    def _weights_from(self, vector: Tensor) -> dict[str, float]:
        assert self.tasks is not None
        return dict(zip(self.tasks, vector.detach().cpu().tolist()))


def weighted_sum(losses: Mapping[str, Tensor], weights: Mapping[str, float | Tensor]) -> Tensor:
    """Sum of ``weights[t] * losses[t]`` over the tasks in ``losses`` (a 0-dim tensor)."""
    if not losses:
        raise ValueError("weighted_sum needs at least one loss")
    return sum(weights[name] * loss for name, loss in losses.items())


def check_positive(where: str, name: str, value: float) -> float:
    """``value`` as a float if it is finite and positive, else a ConfigError naming ``name``."""
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(where, f"{name} must be a positive finite number, got {value}")
    return value
