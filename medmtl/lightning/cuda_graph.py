"""The network's training forward and backward replayed from CUDA graphs (``MultitaskModule(cuda_graph=True)``).

At batch 1 to 8 an unrolled network launches thousands of small kernels per step, and the host issuing them,
not the GPU, sets the pace (at fastMRI knee size on an H200 the kernels of one eager step run for about a third
of its wall time; ``benchmarks/recon_seg_step.py --profile``). ``torch.cuda.make_graphed_callables`` captures
the forward and the backward once each; later steps copy the batch into the captured inputs and replay them, a
few launches instead of thousands. The losses, the balancer and the optimiser stay eager (few kernels).

What capture needs, and what the module checks before it trains (``check_graphable``): one CUDA device and one
process; a network called as ``model(kspace, mask, acs_mask[, target])`` with no host synchronisation or
data-dependent branch in its forward (``ReconSegNet`` qualifies; MONAI's VarNet indexes its mask on the host
and does not); a balancer that needs only ``loss.backward()`` (a replayed backward gives all the parameters'
gradients at once, not one task's); no gradient accumulation (a replayed backward hands autograd gradients
that alias its own output buffer, which the next replay overwrites).

Batches of another shape than the first (an epoch's shorter last batch) run eagerly; so do validation, test
and prediction. Capture runs the first batch three extra times on a side stream, so the BatchNorm running
statistics see it three more times than the eager path would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from medmtl.errors import ConfigError


class _TensorOutputs(nn.Module):
    """``model(*args)`` with its output flattened to its tensors alone (a graph's outputs must be tensors);
    ``rebuild`` puts them back into the network's own output type, with its None fields."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._spec: pytree.TreeSpec | None = None
        self._present: list[bool] = []

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        leaves, self._spec = pytree.tree_flatten(self.model(*args))
        self._present = [leaf is not None for leaf in leaves]
        return tuple(leaf for leaf in leaves if leaf is not None)

    def rebuild(self, tensors: Sequence[Tensor]) -> Any:
        it = iter(tensors)
        return pytree.tree_unflatten([next(it) if p else None for p in self._present], self._spec)


def check_graphable(module) -> None:
    """Raise ConfigError unless ``module`` (a ``MultitaskModule`` set up by its trainer) can train with
    ``cuda_graph``; the module docstring says why each condition holds."""
    device = module.trainer.strategy.root_device
    if device.type != "cuda":
        raise ConfigError("model.cuda_graph", f"needs a CUDA device; this run trains on {device.type}")
    if module.trainer.world_size > 1:
        raise ConfigError(
            "model.cuda_graph", f"supports one process; this run has {module.trainer.world_size}"
        )
    if hasattr(module.model, "forward_batch"):
        raise ConfigError(
            "model.cuda_graph",
            f"{type(module.model).__name__} is called as forward_batch(batch); graphs need "
            "model(kspace, mask, acs_mask[, target])",
        )
    if module.balancer.does_backward or module.balancer.needs_shared:
        raise ConfigError(
            "model.cuda_graph",
            f"{type(module.balancer).__name__} takes per-task gradients; use a balancer that needs only "
            "loss.backward() (FixedWeights, UncertaintyWeighting, DynamicWeightAverage, CoBa)",
        )
    if module.accumulate_grad_batches > 1:
        raise ConfigError(
            "model.cuda_graph",
            f"does not accumulate gradients; got accumulate_grad_batches {module.accumulate_grad_batches}",
        )


class GraphedForward:
    """Calls ``model(*args)`` from CUDA graphs in training: captured at the first call, replayed at every call
    whose inputs have the first call's shapes, dtypes and device, in the same train/eval mode and autocast
    setting; any other call runs eagerly."""

    def __init__(self, model: nn.Module):
        # Not a submodule of the LightningModule, so the weights get no second state_dict entry.
        self._flat = _TensorOutputs(model)
        self._graphed = None
        self._signature: tuple | None = None
        self._told = False

    def _key(self, args: Sequence[Tensor]) -> tuple:
        mode = (
            self._flat.model.training,
            torch.is_autocast_enabled("cuda"),
            torch.get_autocast_dtype("cuda"),
        )
        return tuple((a.shape, a.dtype, a.device) for a in args), mode

    def __call__(self, *args: Tensor) -> Any:
        if self._signature is None:
            self._capture(args)
        key = self._key(args)
        if key != self._signature:
            if not self._told:
                rank_zero_info(
                    f"cuda_graph: inputs {_described(key)} differ from the captured {_described(self._signature)};"
                    " such calls run eagerly"
                )
                self._told = True
            return self._flat.model(*args)
        return self._flat.rebuild(self._graphed(*args))

    def _capture(self, args: Sequence[Tensor]) -> None:
        self._signature = self._key(args)
        sample = tuple(a.detach().clone() for a in args)
        # Autocast's cast cache would hold tensors across replays: capture without it, at the run's dtype.
        autocast = torch.autocast(
            "cuda",
            dtype=torch.get_autocast_dtype("cuda"),
            enabled=torch.is_autocast_enabled("cuda"),
            cache_enabled=False,
        )
        try:
            with autocast:
                self._graphed = torch.cuda.make_graphed_callables(self._flat, sample, allow_unused_input=True)
        except (RuntimeError, AssertionError) as err:  # torch asserts on hooks and non-tensor inputs
            first = " ".join(str(err).split())[:200]
            raise ConfigError(
                "model.cuda_graph",
                f"{type(self._flat.model).__name__} could not be captured in a CUDA graph ({first}); "
                "set cuda_graph: false",
            ) from err
        rank_zero_info(
            f"cuda_graph: captured the training forward and backward for inputs "
            f"{[tuple(a.shape) for a in args]}"
        )


def _described(key: tuple) -> str:
    inputs, (training, autocast, dtype) = key
    mode = "training" if training else "eval"
    cast = str(dtype).removeprefix("torch.") if autocast else "off"
    return f"{[tuple(shape) for shape, _, _ in inputs]} ({mode}, autocast {cast})"
