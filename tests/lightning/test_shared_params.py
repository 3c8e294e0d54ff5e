"""Shared-parameter discovery from the autograd graph."""

import torch
from torch import nn

from medmtl.lightning.shared import shared_parameters


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(4, 5)
        self.head_a = nn.Linear(5, 1)
        self.head_b = nn.Linear(5, 1)
        self.unused = nn.Linear(2, 2)
        self.frozen = nn.Linear(5, 5)
        self.frozen.requires_grad_(False)

    def losses(self, x):
        h = self.frozen(torch.relu(self.trunk(x)))
        return {"a": self.head_a(h).square().mean(), "b": self.head_b(h).abs().mean()}


def test_trunk_is_shared_heads_are_not():
    net = TwoHeads()
    losses = net.losses(torch.randn(3, 4))
    shared = shared_parameters(losses, net.parameters())
    assert [id(p) for p in shared] == [id(p) for p in net.trunk.parameters()]


def test_one_task_shares_nothing():
    net = TwoHeads()
    losses = net.losses(torch.randn(3, 4))
    assert shared_parameters({"a": losses["a"]}, net.parameters()) == []


def test_head_feeding_another_task_is_shared():
    net = TwoHeads()
    x = torch.randn(3, 4)
    h = torch.relu(net.trunk(x))
    a = net.head_a(h)
    losses = {"a": a.mean(), "b": (net.head_b(h) * a).mean()}  # task b reads head a's output (joint feedback)
    shared = {id(p) for p in shared_parameters(losses, net.parameters())}
    assert {id(p) for p in net.head_a.parameters()} <= shared
    assert not {id(p) for p in net.head_b.parameters()} & shared
