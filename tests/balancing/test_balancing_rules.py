"""The defining rule of each method, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medmtl.balancing import (
    CoBa,
    DynamicWeightAverage,
    FixedWeights,
    GradNorm,
    PCGrad,
    UncertaintyWeighting,
    project_conflicting,
)
from medmtl.balancing.coba import coba_weights, window_slope


# ---------------------------------------------------------------- uncertainty == fixed
@pytest.mark.parametrize("log_var", [0.0, 0.7, -1.3])
def test_uncertainty_with_equal_fixed_log_vars_is_fixed_weighting(log_var):
    torch.manual_seed(0)
    net = nn.Linear(3, 4)
    x = torch.randn(8, 3)
    kinds = {"seg": "classification", "recon": "regression", "edge": "regression"}

    def losses():
        out = net(x)
        return {
            "seg": nn.functional.cross_entropy(out[:, :3], torch.arange(8) % 3),
            "recon": 1000 * out[:, 3].pow(2).mean(),
            "edge": out[:, 0].abs().mean(),
        }

    uw = UncertaintyWeighting(list(kinds), kinds, init_log_var=log_var)
    expected = {
        "seg": math.exp(-log_var),
        "recon": 0.5 * math.exp(-log_var),
        "edge": 0.5 * math.exp(-log_var),
    }
    assert uw.weights_dict() == pytest.approx(expected, rel=1e-6)
    fixed = FixedWeights(uw.weights_dict())

    loss_uw = uw.balance(losses()).loss
    grads_uw = torch.autograd.grad(loss_uw, list(net.parameters()))
    loss_fixed = fixed.balance(losses()).loss
    grads_fixed = torch.autograd.grad(loss_fixed, list(net.parameters()))
    # Kendall's regulariser sum_t log(sigma_t) = T s / 2 is the only difference.
    if log_var == 0.0:
        assert torch.equal(loss_uw, loss_fixed)
    torch.testing.assert_close(loss_uw - loss_fixed, torch.tensor(1.5 * log_var), rtol=0, atol=1e-4)
    for a, b in zip(grads_uw, grads_fixed):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_uncertainty_learns_to_downweight_a_1000x_loss():
    torch.manual_seed(0)
    net = nn.Linear(2, 2)
    uw = UncertaintyWeighting(["big", "small"], {"big": "regression", "small": "regression"})
    opt = torch.optim.Adam([*net.parameters(), *uw.parameters()], lr=0.05)
    x = torch.randn(32, 2)
    y = torch.randn(32, 2)
    for _ in range(200):
        opt.zero_grad()
        out = net(x)
        result = uw.balance(
            {"big": 1000 * (out[:, 0] - y[:, 0]).pow(2).mean(), "small": (out[:, 1] - y[:, 1]).pow(2).mean()}
        )
        result.loss.backward()
        opt.step()
    w = uw.weights_dict()
    assert w["big"] < w["small"] / 10  # heading for 1 / (2 L_t): 1000x apart at equilibrium


# ---------------------------------------------------------------- PCGrad
def _pcgrad_case(g1, g2):
    """Two tasks whose shared-parameter gradients are exactly g1 and g2, plus one scalar head each."""
    shared = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    heads = [nn.Parameter(torch.tensor(1.0, dtype=torch.float64)) for _ in range(2)]
    g1, g2 = torch.tensor(g1, dtype=torch.float64), torch.tensor(g2, dtype=torch.float64)
    losses = {"a": g1 @ shared + 3.0 * heads[0], "b": g2 @ shared + 5.0 * heads[1] ** 2}
    return shared, heads, losses


@pytest.mark.parametrize(
    ("g1", "g2", "expected"),
    [
        (
            [1.0, 0.0],
            [-1.0, 1.0],
            [0.5, 1.5],
        ),  # conflicting at 135 degrees: each loses its part along the other
        ([1.0, 0.0], [-2.0, 0.0], [0.0, 0.0]),  # exactly opposed: both cancel
        ([1.0, 0.0], [0.0, 2.0], [1.0, 2.0]),  # orthogonal: untouched
        ([1.0, 1.0], [2.0, 0.5], [3.0, 1.5]),  # agreeing: plain sum
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_pcgrad_removes_the_conflicting_component_exactly(g1, g2, expected, seed):
    shared, heads, losses = _pcgrad_case(g1, g2)
    out = PCGrad(["a", "b"], seed=seed).balance(losses, shared_params=[shared])
    assert out.loss is None
    assert torch.equal(shared.grad, torch.tensor(expected, dtype=torch.float64))
    # Task-specific parameters get their own task's gradient only.
    assert torch.equal(heads[0].grad, torch.tensor(3.0, dtype=torch.float64))
    assert torch.equal(heads[1].grad, torch.tensor(10.0, dtype=torch.float64))
    assert out.grad_norms == pytest.approx({"a": math.hypot(*g1), "b": math.hypot(*g2)})


def test_pcgrad_projection_and_accumulation():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    projected = project_conflicting(grads, torch.Generator().manual_seed(0))
    torch.testing.assert_close(projected, torch.tensor([[0.5, 0.5], [0.0, 1.0]], dtype=torch.float64))
    assert torch.equal(grads, torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64))  # input untouched
    # Nothing conflicts: nothing changes.
    agree = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 1.0], [0.0, 1.0, 1.0]])
    torch.testing.assert_close(project_conflicting(agree), agree)

    # Gradient accumulation: a second micro-batch adds to .grad instead of overwriting it.
    shared, _, losses = _pcgrad_case([1.0, 0.0], [-1.0, 1.0])
    balancer = PCGrad(["a", "b"])
    balancer.balance(losses, shared_params=[shared])
    g1, g2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([-1.0, 1.0], dtype=torch.float64)
    balancer.balance({"a": g1 @ shared, "b": g2 @ shared}, shared_params=[shared])
    assert torch.equal(shared.grad, torch.tensor([1.0, 3.0], dtype=torch.float64))


# ---------------------------------------------------------------- GradNorm
@pytest.mark.parametrize("grad_at", ["features", "params"])
def test_gradnorm_weights_sum_to_task_count_and_shrink_a_1000x_task(grad_at):
    torch.manual_seed(0)
    trunk, heads = nn.Linear(4, 3), nn.ModuleList(nn.Linear(3, 1) for _ in range(3))
    opt = torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=0.01)
    gn = GradNorm(["big", "mid", "small"], alpha=1.5, lr=0.05, grad_at=grad_at)
    x, y = torch.randn(32, 4), torch.randn(32, 3)
    scales = (1000.0, 1.0, 0.01)
    for _ in range(60):
        opt.zero_grad()
        z = torch.tanh(trunk(x))
        losses = {
            n: s * (h(z)[:, 0] - y[:, i]).pow(2).mean()
            for i, (n, s, h) in enumerate(zip(gn.tasks, scales, heads))
        }
        result = gn.balance(losses, shared_params=list(trunk.parameters()), shared_features=z)
        result.loss.backward()
        opt.step()
        assert sum(gn.weights_dict().values()) == pytest.approx(3.0, abs=1e-5)
        assert all(w > 0 for w in gn.weights_dict().values())
        assert set(result.grad_norms) == set(gn.tasks)
    w = gn.weights_dict()
    assert w["big"] < w["mid"] < w["small"]


# ---------------------------------------------------------------- DWA
def test_dwa_weights_follow_the_loss_ratio_of_the_last_two_epochs():
    dwa = DynamicWeightAverage(["a", "b"], temperature=2.0)
    dwa.observe_epoch(train_losses={"a": 4.0, "b": 1.0})
    assert dwa.weights_dict() == {"a": 1.0, "b": 1.0}  # needs two epochs
    dwa.observe_epoch(train_losses={"a": 2.0, "b": 1.0})
    ra, rb = 0.5, 1.0
    expected_a = 2 * math.exp(ra / 2) / (math.exp(ra / 2) + math.exp(rb / 2))
    assert dwa.weights_dict() == pytest.approx({"a": expected_a, "b": 2 - expected_a}, rel=1e-6)
    dwa.observe_epoch(val_losses={"a": 9.0, "b": 9.0})  # DWA reads training losses only
    assert dwa.weights_dict()["a"] == pytest.approx(expected_a, rel=1e-6)


# ---------------------------------------------------------------- CoBa
def test_window_slope_is_the_least_squares_slope():
    values = torch.tensor([[1.0, 5.0], [0.8, 5.0], [0.6, 5.0], [0.4, 5.0]], dtype=torch.float64)
    torch.testing.assert_close(window_slope(values), torch.tensor([-0.2, 0.0], dtype=torch.float64))
    noisy = torch.tensor([[0.0], [1.0], [1.0], [3.0]], dtype=torch.float64)  # numpy.polyfit gives 0.9
    torch.testing.assert_close(window_slope(noisy), torch.tensor([0.9], dtype=torch.float64))


def test_coba_scores():
    slopes = torch.tensor([-0.3, -0.1], dtype=torch.float64)
    history = torch.stack([slopes, slopes])
    # A single observation of a_max: DF = 1, so the weights are the relative convergence score alone.
    w = coba_weights(slopes, history, slopes.max().reshape(1), tau=5.0)
    rcs = torch.softmax(2 * slopes / 0.4, dim=0)
    torch.testing.assert_close(w, rcs)
    assert w[1] > w[0]  # the slower-converging task gets more weight
    # A task that starts to diverge after converging: DF drops and ACS takes its weight away.
    diverging = torch.tensor([-0.3, 0.2], dtype=torch.float64)
    history = torch.tensor([[-0.3, -0.4], [-0.3, -0.2], [-0.3, 0.2]], dtype=torch.float64)
    max_history = torch.tensor([-0.3, -0.2, 0.2], dtype=torch.float64)
    w = coba_weights(diverging, history, max_history, tau=5.0)
    assert w[1] < w[0]
    assert w.sum().item() == pytest.approx(1.0)


def test_coba_balancer_reacts_to_validation_curves():
    coba = CoBa(["fast", "slow"], window=3)
    for k in range(3):
        assert coba.weights_dict() == {"fast": 1.0, "slow": 1.0}  # until the window is full
        coba.observe_epoch(val_losses={"fast": 0.5**k, "slow": 1.0 - 0.02 * k})
    w = coba.weights_dict()
    assert w["slow"] > w["fast"] and sum(w.values()) == pytest.approx(2.0)
    for k in range(3, 9):  # "fast" overfits: its validation loss climbs again
        coba.observe_epoch(val_losses={"fast": 0.125 + 0.1 * (k - 2), "slow": 1.0 - 0.02 * k})
    w = coba.weights_dict()
    assert w["fast"] < w["slow"] and sum(w.values()) == pytest.approx(2.0)
