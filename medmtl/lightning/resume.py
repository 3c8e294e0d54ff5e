"""Per-process state that an exact resume needs beyond what Lightning's checkpoint holds.

Lightning stores the model (the balancer's buffers and extra state included), the optimiser, the schedulers and
the loop counters; ``MultitaskDataModule.state_dict`` adds the data position. What is left differs between
processes: the random generators (torch, CUDA, numpy, python), the running means of the task losses that
``balancer.observe_epoch`` receives at the end of the epoch, and the balancer's state, which under DDP each
process updates from its own losses (GradNorm's weights, say; the model's entry holds rank 0's).
``MultitaskModule`` gathers one :func:`rank_state` per process into the checkpoint and gives each process its
own back.

The simulator and the file datasets do not use these generators: their MONAI transforms are seeded per sample
from (seed, epoch, index), so the data needs only its position. The generators matter for anything else that
draws (dropout, say).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


def rng_states() -> dict[str, Any]:
    """This process's global random generators, in types that ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the legacy global generator is what code draws from)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _to_cpu(value: Any) -> Any:
    """A deep copy of ``value`` with every tensor on the CPU (what is safe to gather, save and load anywhere)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, Mapping):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return copy.deepcopy(value)


def rank_state(means: nn.ModuleDict, balancer: nn.Module) -> dict[str, Any]:
    """This process's part of a checkpoint: its generators, the states of the running ``means`` (task ->
    torchmetrics ``MeanMetric``) and the ``balancer``'s state dict."""
    return {
        "rng": rng_states(),
        "balancer": _to_cpu(dict(balancer.state_dict())),
        "means": {
            task: {k: v.detach().to("cpu", copy=True) for k, v in m.metric_state.items()}
            for task, m in means.items()
        },
    }


def restore_rank_state(state: Mapping[str, Any], means: nn.ModuleDict, balancer: nn.Module) -> None:
    """Restore what :func:`rank_state` returned into this process, ``means`` and ``balancer``."""
    set_rng_states(state["rng"])
    balancer.load_state_dict(state["balancer"])
    for task, metric in means.items():
        saved = state["means"].get(task)
        metric.reset()
        if saved is not None and float(saved["weight"]) > 0:
            metric.merge_state({k: v.to(metric.device) for k, v in saved.items()})
            # merge_state does not count as an update, and an un-updated metric reads as empty at the end of the
            # epoch; a zero-weight update marks it as updated without changing its sums.
            metric.update(torch.zeros((), device=metric.device), weight=0.0)


def gather(state: Any) -> list[Any]:
    """``state`` of every process, by rank (a list of one outside ``torch.distributed``). Every process must
    call it, as every process calls ``on_save_checkpoint``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states
