"""Helpers of the DDP and resume tests: a tiny `medmtl fit` config, a subprocess runner, and two callbacks that
the subprocesses load by class path (the runner puts this folder on PYTHONPATH, for every DDP process too).

``RankProbe`` writes ``<out_dir>/rank<R>.pt`` at the end of fit, per process: the module's state dict, the
(epoch, file, slice) of every training and validation sample it saw, the sum of the task losses and the
balancer weights it logged at every step, and the metrics after every validation. ``StallAfter`` parks the
run once a given number of steps is done and checkpointed, so that a test can SIGKILL it at a known point.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from conftest import TINY_NET
from lightning.pytorch import Callback

from medmtl.keys import Keys

HERE = Path(__file__).resolve().parent


class RankProbe(Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.train: list[tuple[int, str, int]] = []
        self.val: list[tuple[int, str, int]] = []
        self.losses: list[float] = []
        self.weights: list[dict[str, float]] = []
        self.val_metrics: list[dict[str, float]] = []

    @staticmethod
    def _ids(epoch: int, batch: dict[str, Any]) -> list[tuple[int, str, int]]:
        return [(epoch, str(f), int(s)) for f, s in zip(batch[Keys.FNAME], batch[Keys.SLICE])]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train += self._ids(trainer.current_epoch, batch)
        metrics = trainer.callback_metrics
        self.losses.append(sum(float(v) for k, v in metrics.items() if k.startswith("train/loss_")))
        self.weights.append({k: float(v) for k, v in metrics.items() if k.startswith("train/weight_")})

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not trainer.sanity_checking:
            self.val += self._ids(trainer.current_epoch, batch)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            self.val_metrics.append({k: float(v) for k, v in metrics.items() if k.startswith("val/")})

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "state_dict": pl_module.state_dict(),
            "train": self.train,
            "val": self.val,
            "losses": self.losses,
            "weights": self.weights,
            "val_metrics": self.val_metrics,
            "world_size": trainer.world_size,
        }
        torch.save(record, self.out_dir / f"rank{trainer.global_rank}.pt")


class StallAfter(Callback):
    """Once ``step`` optimiser steps are done (and checkpointed in the batch that made the last one), touches
    ``marker`` and sleeps, until the test kills the process."""

    def __init__(self, step: int, marker: str):
        self.step = step
        self.marker = Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.marker.touch()
            time.sleep(600)


def tiny_config(root: Path, *, callbacks: list[dict] | None = None, **overrides: Any) -> Path:
    """A config for a few steps of the tiny network on 32 x 32 crops of 64 x 64 simulated 2-coil slices, with a
    checkpoint after every step; ``overrides`` replace top-level sections key by key (``data={...}``)."""
    config: dict[str, Any] = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 8,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "deterministic": True,
            "default_root_dir": str(root / "run"),
            "logger": False,
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "save_last": True,
                        "every_n_train_steps": 1,
                        "save_top_k": -1,
                        "enable_version_counter": False,
                    },
                },
                {"class_path": "medmtl.lightning.MetricsJSON"},
                {"class_path": "fit_probe.RankProbe", "init_args": {"out_dir": str(root / "probe")}},
                *(callbacks or []),
            ],
        },
        "model": {
            "model": {"class_path": "medmtl.models.recon_seg.ReconSegNet", "init_args": TINY_NET},
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.003}},
            "panel_every_n_val_steps": 0,
        },
        "data": {
            "batch_size": 1,
            "samples_per_epoch": 8,
            "train_slices": "60:76",
            "val_slices": "80:85",
            "augment": False,
            "train_crop": [32, 32],
            "simulation": {"num_coils": 2, "size": [64, 64]},
        },
    }
    for section, values in overrides.items():
        config[section] = {**config[section], **values} if isinstance(values, dict) else values
    path = root / "config.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def fit_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medmtl.cli", "fit", "-c", str(config), *extra]


def fit_env() -> dict[str, str]:
    """One thread per process (two DDP processes share two cores) and this folder importable."""
    path = os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def run_fit(config: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`medmtl fit -c config extra...` in a subprocess; fails the test with its stderr if it fails."""
    out = subprocess.run(
        fit_command(config, *extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=config.parent,
        env=fit_env(),
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def load_probes(root: Path) -> list[dict[str, Any]]:
    """The ``RankProbe`` records of a run, by rank."""
    paths = sorted((root / "probe").glob("rank*.pt"))
    return [torch.load(p, weights_only=False) for p in paths]
