"""Which parameters more than one task loss depends on, read from the autograd graph (no backward pass)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor, nn


def _reached(loss: Tensor) -> set[int]:
    """ids of the leaf tensors that ``loss``'s graph accumulates gradients into."""
    found: set[int] = set()
    seen: set = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        leaf = getattr(node, "variable", None)  # AccumulateGrad nodes hold their leaf
        if leaf is not None:
            found.add(id(leaf))
        stack.extend(child for child, _ in node.next_functions)
    return found


def shared_parameters(losses: Mapping[str, Tensor], params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters (in ``params`` order) that at least two of ``losses`` depend on.

    This is what gradient-surgery balancers (PCGrad) must treat as shared: everything else belongs to one
    task's head and receives that task's gradient alone. The graph walk visits every node once, so it costs
    a fraction of a backward pass; callers cache the result for a fixed model and set of tasks.
    """
    counts: dict[int, int] = {}
    for loss in losses.values():
        for leaf in _reached(loss):
            counts[leaf] = counts.get(leaf, 0) + 1
    return [p for p in params if p.requires_grad and counts.get(id(p), 0) >= 2]
