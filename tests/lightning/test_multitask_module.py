"""MultitaskModule with the real ReconSegNet at tiny sizes, trained and evaluated by a real Lightning Trainer."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_NET
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from medmtl.balancing import FixedWeights, PCGrad
from medmtl.data.datamodule import MultitaskDataModule
from medmtl.data.mni import SimulationOptions
from medmtl.errors import ConfigError
from medmtl.keys import MNI_CLASSES, Keys
from medmtl.lightning import MetricsJSON, MultitaskModule
from medmtl.models.recon_seg import ReconSegNet

SIZE = (64, 64)  # the simulator's smallest matrix



def tiny_net(mode: str = "joint", **kwargs) -> ReconSegNet:
    torch.manual_seed(0)
    return ReconSegNet(mode=mode, **{**TINY_NET, **kwargs})


def datamodule(samples: int = 4, batch_size: int = 2) -> MultitaskDataModule:
    return MultitaskDataModule(
        batch_size=batch_size,
        samples_per_epoch=samples,
        val_slices="74:76",
        simulation=SimulationOptions(num_coils=4, size=SIZE),
        augment=False,
    )


def trainer(tmp_path, **kwargs) -> Trainer:
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 2,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "logger": CSVLogger(tmp_path, name="run", version=""),
        "default_root_dir": tmp_path,
    }
    return Trainer(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def fixed_batch():
    dm = datamodule(samples=2, batch_size=2)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_fit_then_validate_logs_and_writes_metrics_json(tmp_path):
    module = MultitaskModule(tiny_net(), panel_every_n_val_steps=1)
    t = trainer(tmp_path, callbacks=[MetricsJSON()])
    t.fit(module, datamodule=datamodule())
    assert t.global_step == 2
    logged = t.callback_metrics
    for name in (
        "train/loss",
        "train/loss_recon",
        "train/loss_seg",
        "train/weight_recon",
        "train/weight_seg",
    ):
        assert torch.isfinite(logged[name]), name

    t.validate(module, datamodule=datamodule())
    entries = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(entries) == {"fit", "validate"}
    metrics = entries["validate"]["metrics"]
    for name in (
        "ssim",
        "psnr",
        "nmse",
        "loss_recon",
        "loss_seg",
        "dice_grey_matter",
        "dice_white_matter",
        "hd95_grey_matter",
        "dice_mean",
    ):
        assert f"val/{name}" in metrics, name
    assert -1 <= metrics["val/ssim"] <= 1
    assert 0 <= metrics["val/dice_white_matter"] <= 1
    assert list((tmp_path / "run" / "panels").glob("val_*.png"))


def test_loss_falls_when_overfitting_one_batch(tmp_path, fixed_batch):
    module = MultitaskModule(tiny_net(), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    losses = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/loss"]))

    t = trainer(tmp_path, max_steps=6, limit_val_batches=0, callbacks=[Record()])
    t.fit(module, train_dataloaders=DataLoader([fixed_batch] * 6, batch_size=None))
    assert len(losses) == 6
    assert losses[-1] < losses[0], losses


def test_pcgrad_runs_a_manual_step_with_gradient_norms(tmp_path, fixed_batch):
    # segmenting after the first cascade feeds the second one, so the segmentation head is shared
    module = MultitaskModule(tiny_net(seg_every=1), balancer=PCGrad(tasks=("recon", "seg")))
    before = [p.detach().clone() for p in module.parameters()]
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    t.fit(module, train_dataloaders=DataLoader([fixed_batch], batch_size=None))
    assert t.global_step == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))
    for task in ("recon", "seg"):
        assert torch.isfinite(t.callback_metrics[f"train/grad_norm_{task}"])
    shared = {id(p) for p in module._shared}
    assert {id(p) for p in module.model.seg_net.parameters()} <= shared


def test_accumulation_and_clipping(tmp_path, fixed_batch):
    module = MultitaskModule(tiny_net(), accumulate_grad_batches=2, gradient_clip_val=0.01)
    norms = []
    step = module._optimizer_step

    def spy():
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        step()
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else None)

    module._optimizer_step = spy
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    t.fit(module, train_dataloaders=DataLoader([fixed_batch] * 4, batch_size=None))
    assert t.global_step == 2 and len(norms) == 2
    assert all(n is not None and n <= 0.01 * 1.001 for n in norms)


def test_observe_epoch_gets_mean_train_and_val_losses(tmp_path):
    calls = []

    class Spy(FixedWeights):
        def observe_epoch(self, train_losses=None, val_losses=None):
            calls.append((train_losses, val_losses))

    module = MultitaskModule(tiny_net(), balancer=Spy())
    t = trainer(tmp_path, max_steps=-1, max_epochs=1, limit_train_batches=2)
    t.fit(module, datamodule=datamodule())
    assert len(calls) == 1
    train, val = calls[0]
    assert set(train) == set(val) == {"recon", "seg"}
    assert all(v > 0 for v in [*train.values(), *val.values()])


def test_segmentation_only_mode_logs_no_recon_metrics(tmp_path):
    module = MultitaskModule(tiny_net("seg_zero_filled"), panel_every_n_val_steps=1)
    t = trainer(tmp_path)
    t.validate(module, datamodule=datamodule())
    logged = t.callback_metrics
    assert "val/dice_grey_matter" in logged and "val/loss_seg" in logged
    assert "val/ssim" not in logged and "val/loss_recon" not in logged
    assert list((tmp_path / "run" / "panels").glob("*.png"))


def test_predict_step_returns_input_units(fixed_batch):
    module = MultitaskModule(tiny_net()).eval()
    with torch.no_grad():
        out = module.predict_step(fixed_batch, 0)
        scaled = dict(fixed_batch)
        scaled[Keys.SCALE] = fixed_batch[Keys.SCALE] * 10
        out10 = module.predict_step(scaled, 0)
    b, _, h, w, _ = fixed_batch[Keys.KSPACE].shape
    assert out["reconstruction"].shape == (b, h, w) and out["segmentation"].dtype == torch.uint8
    torch.testing.assert_close(out10["reconstruction"], out["reconstruction"] * 10)
    assert out[Keys.FNAME.value] == fixed_batch[Keys.FNAME]


def test_hparams_hold_only_plain_values_when_built_in_python():
    module = MultitaskModule(tiny_net(), balancer=FixedWeights({"recon": 1.0, "seg": 2.0}))
    assert (
        "model" not in module.hparams
        and "balancer" not in module.hparams
        and "optimizer" not in module.hparams
    )
    assert module.hparams["class_names"] == MNI_CLASSES


@pytest.mark.parametrize(
    "kwargs",
    [
        {"class_names": ("background",)},
        {"accumulate_grad_batches": 0},
        {"gradient_clip_val": 0.0},
        {"scheduler_interval": "batch"},
        {"panel_every_n_val_steps": -1},
    ],
)
def test_bad_arguments_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        MultitaskModule(tiny_net(), **kwargs)


def test_class_names_must_match_the_network(tmp_path, fixed_batch):
    module = MultitaskModule(tiny_net(), class_names=("bg", "fg"))
    with pytest.raises(ConfigError, match="class_names"):
        module.predict_step(fixed_batch, 0)
