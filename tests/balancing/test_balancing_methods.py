"""Behaviour every balancer shares: positive finite weights, the NaN policy, checkpoint round trips."""

from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch
from torch import nn

from medmtl.balancing import (
    Balancer,
    CoBa,
    DynamicWeightAverage,
    FixedWeights,
    GradNorm,
    NonFiniteLossError,
    PCGrad,
    UncertaintyWeighting,
)
from medmtl.errors import ConfigError, InputError, MedmtlError

TASKS = ("reg", "cls", "aux")
EPOCH = 4  # steps per "epoch" for DWA and CoBa



def make_balancer(name: str, nan_policy: str = "skip") -> Balancer:
    kinds = {"reg": "regression", "cls": "classification", "aux": "regression"}
    return {
        "fixed": lambda: FixedWeights({"reg": 1.0, "cls": 2.0, "aux": 0.5}, nan_policy=nan_policy),
        "fixed_equal": lambda: FixedWeights(None, nan_policy=nan_policy),
        "uncertainty": lambda: UncertaintyWeighting(TASKS, kinds, nan_policy=nan_policy),
        "dwa": lambda: DynamicWeightAverage(TASKS, nan_policy=nan_policy),
        "gradnorm_features": lambda: GradNorm(TASKS, lr=0.05, nan_policy=nan_policy),
        "gradnorm_params": lambda: GradNorm(TASKS, lr=0.05, grad_at="params", nan_policy=nan_policy),
        "coba": lambda: CoBa(TASKS, window=3, nan_policy=nan_policy),
        "pcgrad": lambda: PCGrad(TASKS, seed=3, nan_policy=nan_policy),
    }[name]()


METHODS = [
    "fixed",
    "fixed_equal",
    "uncertainty",
    "dwa",
    "gradnorm_features",
    "gradnorm_params",
    "coba",
    "pcgrad",
]
ADAPTIVE = ["uncertainty", "dwa", "gradnorm_features", "gradnorm_params", "coba"]


class Toy(nn.Module):
    """A shared trunk (5 -> 4) with a regression head, a 3-class head and a second, 100x-scaled regression."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh())
        self.heads = nn.ModuleDict({"reg": nn.Linear(4, 1), "cls": nn.Linear(4, 3), "aux": nn.Linear(4, 1)})

    def forward(self, x):
        z = self.trunk(x)
        return z, {name: head(z) for name, head in self.heads.items()}


def batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(16, 5, generator=g)
        yield x, x[:, :1] * 2.0 - x[:, 1:2], (x[:, 2] > 0).long() + (x[:, 3] > 0.5).long(), x[:, 4:5] ** 2


def task_losses(out, y_reg, y_cls, y_aux):
    return {
        "reg": nn.functional.mse_loss(out["reg"], y_reg),
        "cls": nn.functional.cross_entropy(out["cls"], y_cls),
        "aux": 100.0 * nn.functional.mse_loss(out["aux"], y_aux),
    }


class Run:
    """A model, its optimiser and a balancer, stepped the way a MultitaskModule would step them."""

    def __init__(self, name: str, nan_policy: str = "skip"):
        self.model = Toy()
        self.balancer = make_balancer(name, nan_policy)
        self.opt = torch.optim.Adam([*self.model.parameters(), *self.balancer.parameters()], lr=0.01)
        self.step_losses: list[dict[str, float]] = []
        self.val_x = torch.randn(64, 5, generator=torch.Generator().manual_seed(9))

    def step(self, batch, nan_task: str | None = None, all_nan: bool = False):
        x, *targets = batch
        self.opt.zero_grad(set_to_none=True)
        z, out = self.model(x)
        losses = task_losses(out, *targets)
        for name in losses:
            if all_nan or name == nan_task:
                losses[name] = losses[name] * float("nan")
        result = self.balancer.balance(
            losses,
            shared_params=list(self.model.trunk[2].parameters())
            if not isinstance(self.balancer, PCGrad)
            else list(self.model.trunk.parameters()),
            shared_features=z,
        )
        if result.loss is not None:
            result.loss.backward()
        self.opt.step()
        self.step_losses.append({k: float(v.detach()) for k, v in losses.items()})
        if len(self.step_losses) % EPOCH == 0:
            recent = self.step_losses[-EPOCH:]
            train = {k: sum(r[k] for r in recent) / EPOCH for k in TASKS}
            with torch.no_grad():
                x = self.val_x
                _, out = self.model(x)
                val = {
                    k: float(v)
                    for k, v in task_losses(
                        out,
                        x[:, :1] * 2.0 - x[:, 1:2],
                        (x[:, 2] > 0).long() + (x[:, 3] > 0.5).long(),
                        x[:, 4:5] ** 2,
                    ).items()
                }
            self.balancer.observe_epoch(train_losses=train, val_losses=val)
        return result


def all_state_finite(module: nn.Module) -> bool:
    return all(
        torch.isfinite(t).all()
        for t in module.state_dict().values()
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    )


@pytest.mark.parametrize("name", METHODS)
def test_weights_positive_and_finite_over_many_steps(name):
    run = Run(name)
    first = None
    for batch in batches(48):
        result = run.step(batch)
        assert set(result.weights) == set(TASKS)
        assert all(math.isfinite(w) and w > 0 for w in result.weights.values()), result.weights
        assert result.loss is None if run.balancer.does_backward else torch.isfinite(result.loss)
        first = first or result.weights
    assert all_state_finite(run.balancer)
    if name in ADAPTIVE:
        assert run.balancer.weights_dict() != first, "an adaptive method never moved its weights"


@pytest.mark.parametrize("name", METHODS)
def test_nan_loss_is_skipped_without_touching_its_weight(name):
    run = Run(name)
    data = list(batches(2 * EPOCH + 3))
    for batch in data[:-3]:
        run.step(batch)
    before = run.balancer.weights_dict()
    extra_before = copy.deepcopy(run.balancer.state_dict().get("_extra_state"))
    cls_head = copy.deepcopy(run.model.heads["cls"].state_dict())
    run.step(data[-3], nan_task="cls")
    after = run.balancer.weights_dict()
    assert after["cls"] == before["cls"]
    if isinstance(run.balancer, GradNorm):  # nor did the skipped weight's Adam moments
        cls = TASKS.index("cls")
        opt_before = extra_before["optimizer"]["state"][cls]
        opt_after = run.balancer.state_dict()["_extra_state"]["optimizer"]["state"][cls]
        assert all(torch.equal(opt_before[k], opt_after[k]) for k in opt_before)
    assert all(math.isfinite(w) and w > 0 for w in after.values())
    assert all_state_finite(run.balancer) and all_state_finite(run.model)
    # The skipped task's head received no gradient, so Adam left it alone.
    assert all(torch.equal(v, run.model.heads["cls"].state_dict()[k]) for k, v in cls_head.items())
    assert int(run.balancer.dropped_losses) == 1

    # Every task non-finite: no loss, no gradient, a counted skip, nothing moves.
    params = copy.deepcopy(run.model.state_dict())
    result = run.step(data[-2], all_nan=True)
    assert result.loss is None
    assert run.balancer.weights_dict() == after
    assert int(run.balancer.skipped_steps) == 1
    assert all(p.grad is None for p in run.model.parameters())
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in params.items())

    # And training carries on normally afterwards.
    result = run.step(data[-1])
    assert all(math.isfinite(w) and w > 0 for w in result.weights.values())
    assert all_state_finite(run.balancer)


@pytest.mark.parametrize("name", METHODS)
def test_nan_loss_raises_naming_the_task(name):
    run = Run(name, nan_policy="raise")
    data = list(batches(2))
    run.step(data[0])
    with pytest.raises(NonFiniteLossError, match=r"'cls'.*nan") as info:
        run.step(data[1], nan_task="cls")
    assert isinstance(info.value, MedmtlError)


@pytest.mark.parametrize("name", ["dwa", "coba"])
@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_non_finite_epoch_losses(name, policy):
    balancer = make_balancer(name, policy)
    good = {"reg": 1.0, "cls": 2.0, "aux": 3.0}
    for scale in (1.0, 0.8, 0.7, 0.6):
        balancer.observe_epoch(
            train_losses={k: v * scale for k, v in good.items()},
            val_losses={k: v * scale for k, v in good.items()},
        )
    before = copy.deepcopy(balancer.state_dict())
    bad = {**good, "aux": float("inf")}
    if policy == "raise":
        with pytest.raises(NonFiniteLossError, match="'aux'"):
            balancer.observe_epoch(train_losses=bad, val_losses=bad)
    else:
        balancer.observe_epoch(train_losses=bad, val_losses=bad)
        after = balancer.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before if isinstance(before[k], torch.Tensor))
        assert before.get("_extra_state") == after.get("_extra_state")


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_restores_identical_behaviour(name):
    data = list(batches(5 * EPOCH))
    run = Run(name)
    for batch in data[: 3 * EPOCH + 1]:
        run.step(batch)

    buffer = io.BytesIO()
    torch.save(
        {
            "model": run.model.state_dict(),
            "balancer": run.balancer.state_dict(),
            "opt": run.opt.state_dict(),
            "history": run.step_losses,
        },
        buffer,
    )
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)  # what a Lightning checkpoint load allows
    twin = Run(name)
    twin.model.load_state_dict(ckpt["model"])
    twin.balancer.load_state_dict(ckpt["balancer"])
    twin.opt.load_state_dict(ckpt["opt"])
    twin.step_losses = list(ckpt["history"])

    for batch in data[3 * EPOCH + 1 :]:
        a, b = run.step(batch), twin.step(batch)
        assert a.weights == b.weights
        assert a.grad_norms == b.grad_norms
    for (k, v), w in zip(run.model.state_dict().items(), twin.model.state_dict().values()):
        assert torch.equal(v, w), k


def test_balance_rejects_wrong_tasks_and_shapes():
    balancer = make_balancer("dwa")
    with pytest.raises(InputError, match="expected"):
        balancer.balance({"reg": torch.tensor(1.0)})
    with pytest.raises(InputError, match="scalar"):
        balancer.balance({"reg": torch.ones(2), "cls": torch.tensor(1.0), "aux": torch.tensor(1.0)})
    with pytest.raises(ConfigError, match="shared"):
        make_balancer("gradnorm_features").balance({t: torch.tensor(1.0, requires_grad=True) for t in TASKS})
    with pytest.raises(ConfigError, match="shared_features"):
        make_balancer("gradnorm_features").balance(
            {t: torch.tensor(1.0, requires_grad=True) for t in TASKS},
            shared_params=[nn.Parameter(torch.ones(1))],
        )


@pytest.mark.parametrize(
    "build",
    [
        lambda: FixedWeights({"a": -1.0}),
        lambda: FixedWeights({"a": 1.0}, nan_policy="ignore"),
        lambda: UncertaintyWeighting(["a", "b"], {"a": "regression"}),
        lambda: UncertaintyWeighting(["a"], {"a": "ordinal"}),
        lambda: DynamicWeightAverage(["a", "a"]),
        lambda: DynamicWeightAverage([], temperature=2.0),
        lambda: DynamicWeightAverage(["a"], temperature=0.0),
        lambda: GradNorm(["a"], grad_at="logits"),
        lambda: GradNorm(["a"], alpha=float("nan")),
        lambda: CoBa(["a", "b"], window=1),
    ],
)
def test_bad_configuration_is_a_config_error(build):
    with pytest.raises(ConfigError):
        build()


@pytest.mark.parametrize(
    ("class_path", "init_args"),
    [
        ("FixedWeights", {"weights": {"recon": 1.0, "seg": 0.1}}),
        (
            "UncertaintyWeighting",
            {"tasks": ["recon", "seg"], "task_types": {"recon": "regression", "seg": "classification"}},
        ),
        ("DynamicWeightAverage", {"tasks": ["recon", "seg"], "temperature": 1.0}),
        ("GradNorm", {"tasks": ["recon", "seg"], "alpha": 0.5, "grad_at": "params"}),
        ("CoBa", {"tasks": ["recon", "seg"], "window": 4, "nan_policy": "raise"}),
        ("PCGrad", {"tasks": ["recon", "seg"], "seed": 7}),
    ],
)
def test_selectable_by_class_path(class_path, init_args):
    """What LightningCLI does with ``model.balancer: {class_path: ..., init_args: ...}`` in YAML."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--balancer", type=Balancer)
    config = {"class_path": f"medmtl.balancing.{class_path}", "init_args": init_args}
    namespace = parser.parse_args(["--balancer", json.dumps(config)])
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    balancer = instantiate(namespace).balancer
    assert type(balancer).__name__ == class_path
    assert set(balancer.weights_dict()) <= {"recon", "seg"}
