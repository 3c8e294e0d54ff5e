"""MultitaskModule(cuda_graph=True): what is checked before training (CPU), and on a GPU that the graphed
forward and backward give the eager step's outputs and gradients and train through a real Trainer.

The CUDA tests are skipped without a GPU; ``benchmarks/gpu.sh`` (PARTS=graph) runs them on a lent one.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_NET
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from medmtl.balancing import FixedWeights, GradNorm, PCGrad, UncertaintyWeighting
from medmtl.data.datamodule import MultitaskDataModule
from medmtl.data.mni import SimulationOptions
from medmtl.errors import ConfigError
from medmtl.lightning import MultitaskModule
from medmtl.lightning.cuda_graph import GraphedForward, _described, _TensorOutputs, check_graphable
from medmtl.lightning.module import _network_args
from medmtl.models.recon_seg import ReconSegNet

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def net(mode: str = "joint", **kwargs) -> ReconSegNet:
    torch.manual_seed(0)
    return ReconSegNet(mode=mode, **{**TINY_NET, **kwargs})


@pytest.fixture(scope="module")
def batches():
    dm = MultitaskDataModule(
        batch_size=2,
        samples_per_epoch=4,
        val_slices="74:76",
        simulation=SimulationOptions(num_coils=4, size=(64, 64)),
        augment=False,
    )
    dm.setup("fit")
    return list(dm.train_dataloader())


@pytest.mark.parametrize("mode", ["joint", "recon", "sequential", "seg_zero_filled"])
def test_tensor_outputs_round_trip_keeps_none_fields(batches, mode):
    model = net(mode).eval()
    args = _network_args(batches[0])
    flat = _TensorOutputs(model)
    with torch.no_grad():
        direct, tensors = model(*args), flat(*args)
    assert all(isinstance(t, torch.Tensor) for t in tensors)
    rebuilt = flat.rebuild(tensors)
    assert type(rebuilt) is type(direct)
    for a, b in zip(direct, rebuilt, strict=True):
        if isinstance(a, list):
            assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        else:
            assert (a is None and b is None) or torch.equal(a, b)


def stub(device: str = "cuda", world_size: int = 1, balancer=None, accumulate: int = 1, model=None):
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device(device)), world_size=world_size
    )
    return SimpleNamespace(
        trainer=trainer,
        model=model if model is not None else net(),
        balancer=balancer or FixedWeights(),
        accumulate_grad_batches=accumulate,
    )


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"device": "cpu"}, "needs a CUDA device; this run trains on cpu"),
        ({"world_size": 2}, "supports one process; this run has 2"),
        ({"balancer": GradNorm(tasks=("recon", "seg"))}, "GradNorm takes per-task gradients"),
        ({"balancer": PCGrad(tasks=("recon", "seg"))}, "PCGrad takes per-task gradients"),
        ({"accumulate": 2}, "accumulate_grad_batches 2"),
        ({"model": SimpleNamespace(forward_batch=None)}, "called as forward_batch(batch)"),
    ],
)
def test_check_graphable_names_what_stops_capture(kwargs, says):
    with pytest.raises(ConfigError, match="cuda_graph") as err:
        check_graphable(stub(**kwargs))
    assert says in str(err.value)


def test_check_graphable_accepts_a_plain_single_gpu_run():
    check_graphable(stub())
    check_graphable(
        stub(
            balancer=UncertaintyWeighting(
                tasks=("recon", "seg"), task_types={"recon": "regression", "seg": "classification"}
            )
        )
    )


def test_cuda_graph_on_cpu_trainer_is_one_config_error(tmp_path, batches):
    module = MultitaskModule(net(), cuda_graph=True)
    trainer = Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path
    )
    with pytest.raises(ConfigError, match="needs a CUDA device; this run trains on cpu"):
        trainer.fit(module, train_dataloaders=DataLoader(batches[:1], batch_size=None))


def test_graph_key_covers_shapes_and_train_mode(batches):
    """A replay needs the captured shapes and mode: an eval-mode or other-shaped call gets another key."""
    model = net()
    graphed = GraphedForward(model)
    args = _network_args(batches[0])
    key = graphed._key(args)
    assert graphed._key(_network_args(batches[1])) == key
    assert graphed._key([a[:1] for a in args]) != key
    model.eval()
    assert graphed._key(args) != key
    assert (
        _described(key)
        == "[(2, 4, 64, 64, 2), (2, 1, 1, 64, 1), (2, 1, 1, 64, 1), (2, 64, 64)] (training, autocast off)"
    )


def _gpu_trainer(root, precision: str, **kwargs) -> Trainer:
    return Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=root,
        **kwargs,
    )


def _on(batch, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _loss_and_grads(model, out, batch):
    loss = sum(model.compute_losses(out, batch).values())
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    return loss.detach(), grads


@cuda
@pytest.mark.parametrize("dc", ["gradient", "cg"])
def test_graphed_step_matches_the_eager_step(batches, dc, monkeypatch):
    """Same weights, same batch: the replayed forward and backward give the eager loss and every gradient,
    at the captured batch and at a new one copied into the graph's inputs."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    model = net(dc=dc).cuda()
    graphed = GraphedForward(model)
    graphed(*_network_args(_on(batches[0], "cuda")))  # capture; BatchNorm statistics move, so compare after
    for batch in (_on(batches[1], "cuda"), _on(batches[0], "cuda")):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        loss_g, grads_g = _loss_and_grads(model, graphed(*_network_args(batch)), batch)
        model.load_state_dict(state)  # undo the replay's BatchNorm update before the eager step
        loss_e, grads_e = _loss_and_grads(model, model(*_network_args(batch)), batch)
        model.load_state_dict(state)
        assert torch.allclose(loss_g, loss_e, rtol=1e-4, atol=1e-6)
        for g, e in zip(grads_g, grads_e, strict=True):
            assert torch.isfinite(g).all()
            assert (g - e).norm() <= 1e-3 * e.norm() + 1e-7


@cuda
def test_graphed_forward_runs_other_shapes_eagerly(batches):
    model = net().cuda()
    graphed = GraphedForward(model)
    graphed(*_network_args(_on(batches[0], "cuda")))
    single = {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in _on(batches[1], "cuda").items()}
    out = graphed(*_network_args(single))
    assert out.recon.shape[0] == 1 and "Graphed" not in type(out.recon.grad_fn).__name__
    torch.testing.assert_close(out.recon, model(*_network_args(single)).recon)


@cuda
def test_graphed_training_follows_eager_training(tmp_path, batches, monkeypatch):
    """Three Lightning steps (batches 0, 1, 0) from the same weights, with plain SGD so that every gradient
    counts as it is: with graphs the weights move as they do eagerly. Stale graph inputs, or gradients doubled
    or left over between replays, would move them elsewhere."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    start = {k: v.clone() for k, v in net().named_parameters()}
    moves = []
    for graph in (False, True):
        module = MultitaskModule(net(), optimizer=lambda p: torch.optim.SGD(p, lr=0.05), cuda_graph=graph)
        trainer = _gpu_trainer(tmp_path / str(graph), "32-true", max_steps=3)
        trainer.fit(
            module, train_dataloaders=DataLoader([batches[0], batches[1], batches[0]], batch_size=None)
        )
        moves.append({k: v.detach().cpu() - start[k] for k, v in module.model.named_parameters()})
    eager, graphed = moves
    assert any(m.norm() > 0 for m in eager.values())
    for name, move in eager.items():
        assert (graphed[name] - move).norm() <= 1e-3 * move.norm() + 1e-6, name


@cuda
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fit_with_cuda_graph_lowers_the_loss(tmp_path, batches, precision):
    module = MultitaskModule(net(), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), cuda_graph=True)
    losses = []

    replayed = []

    class Keep(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/loss"]))
            replayed.append(pl_module._graphed is not None and pl_module._graphed._graphed is not None)

    trainer = _gpu_trainer(tmp_path, precision, max_steps=8, callbacks=[Keep()])
    trainer.fit(module, train_dataloaders=DataLoader([batches[0]] * 8, batch_size=None))
    assert all(replayed) and module._graphed is None  # captured at the first step, released after fit
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses
