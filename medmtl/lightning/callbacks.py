"""Callbacks of the ``medmtl`` training commands: ``metrics.json`` and prediction files.

``MetricsJSON`` writes the logged metrics at the end of ``fit``, ``validate`` and ``test`` into one JSON file
(one entry per command, so a validation run does not erase the training run's numbers) and prints where the
run's outputs are. ``PredictionWriter`` writes the predictions file of DESIGN.md for every input file of
``medmtl predict``. ``StepTimer`` writes the wall time of every training step and the peak memory of the run.
``TimeBudget`` fits the step count and the cosine learning rate to a wall-clock budget (a GPU lease).
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from medmtl.inference import write_predictions
from medmtl.io.atomic import atomic_path
from medmtl.keys import Keys


def _number(value: Any) -> float | None:
    value = float(value.detach().cpu()) if isinstance(value, torch.Tensor) else float(value)
    return value if math.isfinite(value) else None  # JSON has no NaN or Infinity


class MetricsJSON(Callback):
    """Writes ``trainer.callback_metrics`` to ``path`` (default ``<log_dir>/metrics.json``) atomically.

    The file maps the command (``fit``, ``validate``, ``test``) to ``{"metrics": {...}, "epoch", "global_step",
    "checkpoint"}``; non-finite values are written as null. Entries of other commands already in the file
    are kept.
    """

    def __init__(self, path: str | None = None):
        self.path = path

    def _path(self, trainer: Trainer) -> Path:
        return (
            Path(self.path)
            if self.path
            else Path(trainer.log_dir or trainer.default_root_dir) / "metrics.json"
        )

    def _write(self, trainer: Trainer, pl_module: LightningModule, command: str) -> None:
        # Every process resolves the paths (trainer.log_dir is a broadcast from rank 0); rank 0 writes.
        path = self._path(trainer)
        panels = getattr(pl_module, "panel_dir", None)
        self._write_on_rank_zero(trainer, command, path, panels)

    @rank_zero_only
    def _write_on_rank_zero(self, trainer: Trainer, command: str, path: Path, panels: Path | None) -> None:
        metrics = {
            name: _number(value)
            for name, value in sorted(trainer.callback_metrics.items())
            if not isinstance(value, torch.Tensor) or value.numel() == 1
        }
        checkpoint = trainer.checkpoint_callback
        checkpoint_path = None
        if checkpoint is not None:
            checkpoint_path = checkpoint.last_model_path or checkpoint.best_model_path or None
        if command != "fit":
            checkpoint_path = getattr(trainer, "ckpt_path", None) or checkpoint_path
        entries: dict[str, Any] = {}
        if path.is_file():
            try:
                entries = json.loads(path.read_text())
            except (OSError, ValueError):
                entries = {}  # an unreadable old file is replaced, not a reason to lose this run's numbers
        entries[command] = {
            "metrics": metrics,
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "checkpoint": None if checkpoint_path is None else str(checkpoint_path),
        }
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
        print(f"medmtl {command}: metrics -> {path}")
        if checkpoint_path:
            print(f"medmtl {command}: checkpoint -> {checkpoint_path}")
        if panels is not None and Path(panels).is_dir() and any(Path(panels).glob("*.png")):
            print(f"medmtl {command}: panels -> {panels}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module, "fit")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer, pl_module, "validate")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module, "test")


class StepTimer(Callback):
    """Times every training step and writes ``<log_dir>/step_times.json`` at the end of ``fit``.

    A step is timed from ``on_train_batch_start`` to ``on_train_batch_end``: the forward pass, the balancer,
    the backward pass and the optimiser step, without data loading, validation or checkpointing. The file
    holds ``seconds`` (every step of this process, in order), their ``median_s`` and ``mean_s`` over all but
    the first ``skip`` steps (warm-up), ``peak_rss_mib`` (the process's peak resident memory, from
    ``getrusage``; dataloader workers are other processes and are not counted) and, on CUDA,
    ``peak_cuda_mib`` (``torch.cuda.max_memory_allocated``). Rank 0 writes; other ranks' times are not kept.

    Args:
        path: output file; default ``<log_dir>/step_times.json``.
        skip: leading steps left out of the median and mean.
    """

    def __init__(self, path: str | None = None, skip: int = 5):
        self.path = path
        self.skip = int(skip)
        self.seconds: list[float] = []
        self._start: float | None = None

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.seconds.append(time.perf_counter() - self._start)
        self._start = None

    def summary(self, device: torch.device) -> dict[str, Any]:
        timed = self.seconds[self.skip :] or self.seconds
        out: dict[str, Any] = {
            "steps": len(self.seconds),
            "skip": self.skip,
            "median_s": statistics.median(timed) if timed else None,
            "mean_s": statistics.fmean(timed) if timed else None,
            # ru_maxrss is in KiB on Linux.
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": self.seconds,
        }
        if device.type == "cuda":
            out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        return out

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = (
            Path(self.path)
            if self.path
            else Path(trainer.log_dir or trainer.default_root_dir) / "step_times.json"
        )
        self._write(path, self.summary(pl_module.device))

    @rank_zero_only
    def _write(self, path: Path, summary: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(summary, indent=1) + "\n")


class TimeBudget(Callback):
    """Fits the number of training steps to a wall-clock budget, and the cosine learning rate with it.

    A cosine schedule must know its length in steps, but how many steps fit in a GPU lease depends on the
    machine. After ``skip`` warm-up steps, this callback times the next ``measure`` steps (everything between
    them: data waits, the step, logging), then sets ``max_steps`` to the steps that fit in ``seconds`` from the
    start of training, never above the configured ``max_steps``, and stretches or shrinks every
    ``CosineAnnealingLR`` to end there (its ``T_max``, and the current learning rate put on the new curve).
    It prints the chosen count: ``--trainer.max_steps N`` with ``T_max`` N repeats the run on any machine. The
    choice is kept in the checkpoint, so a resumed run keeps it. Time spent in validation is not in the
    measured window: ``reserve`` (a fraction of ``seconds``) is kept back for it and for the final checkpoint.
    The last step is validated and checkpointed whatever ``val_check_interval`` is.

    Args:
        seconds: the training budget, from the first training step.
        skip: warm-up steps (CUDA and cuDNN start-up, workers filling their queues) left out of the timing.
        measure: steps timed after the warm-up.
        reserve: fraction of ``seconds`` kept for validation, checkpoints and timing error.
    """

    def __init__(self, seconds: float, skip: int = 20, measure: int = 50, reserve: float = 0.1):
        if not seconds > 0 or skip < 0 or measure < 1 or not 0 <= reserve < 1:
            raise ValueError(
                f"TimeBudget needs seconds > 0, skip >= 0, measure >= 1 and 0 <= reserve < 1; got {seconds}, "
                f"{skip}, {measure}, {reserve}"
            )
        self.seconds, self.skip, self.measure, self.reserve = float(seconds), int(skip), int(measure), reserve
        self.max_steps: int | None = None  # the choice, once made
        self._start: float | None = None
        self._mark: float | None = None  # clock and step where the timed window starts
        self._mark_step = 0

    _clock = staticmethod(time.perf_counter)

    def state_dict(self) -> dict[str, Any]:
        return {"max_steps": self.max_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.max_steps = state_dict.get("max_steps")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = self._clock()
        if self.max_steps is not None:  # resumed: keep the choice
            self._apply(trainer, self.max_steps)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.max_steps is None:
            self._measure(trainer)
        if self.max_steps is not None and trainer.global_step >= self.max_steps:
            # Stopping (not just running out of steps) makes Lightning validate this last step, so the final
            # weights get their metrics and last.ckpt (it validates every val_check_interval only).
            trainer.should_stop = True

    def _measure(self, trainer: Trainer) -> None:
        if self._start is None:
            return
        now, step = self._clock(), trainer.global_step
        if self._mark is None:
            if step >= self.skip:
                self._mark, self._mark_step = now, step
            return
        if step - self._mark_step < self.measure:
            return
        per_step = (now - self._mark) / (step - self._mark_step)
        left = self.seconds * (1 - self.reserve) - (now - self._start)
        steps = step + max(0, int(left / per_step))
        if trainer.max_steps > 0:
            steps = min(steps, trainer.max_steps)
        steps = trainer.strategy.broadcast(steps, src=0)  # ranks must stop together
        self.max_steps = steps
        self._apply(trainer, steps)
        rank_zero_info(
            f"TimeBudget: {per_step * 1000:.1f} ms per step over steps {self._mark_step}-{step}; "
            f"max_steps set to {steps} for {self.seconds:.0f} s (repeat with --trainer.max_steps {steps} "
            f"and the cosine's T_max {steps})"
        )

    @staticmethod
    def _apply(trainer: Trainer, steps: int) -> None:
        trainer.fit_loop.epoch_loop.max_steps = steps
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
                rank_zero_warn(
                    f"TimeBudget refits CosineAnnealingLR only; {type(scheduler).__name__} keeps its own length"
                )
                continue
            scheduler.T_max = steps
            t = min(scheduler.last_epoch, steps)
            for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
                group["lr"] = (
                    scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * t / steps)) / 2
                )


class PredictionWriter(BasePredictionWriter):
    """Writes ``<output_dir>/<input file name>`` for every input file of ``medmtl predict``.

    Slices arrive in file order (the predict loader does not shuffle), so a file is written as soon as a batch
    of another file arrives, and the rest at the end; only one file's slices are held at a time. It assumes
    one process sees every slice of a file: predict on one device (``medmtl recon-seg`` is the streaming
    alternative for large folders).

    Args:
        output_dir: the folder for the prediction files (created if needed).
    """

    def __init__(self, output_dir: str):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self._pending: OrderedDict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = OrderedDict()

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        if prediction["segmentation"] is None:
            raise ValueError("PredictionWriter needs a model with a segmentation task")
        names, slices = prediction[Keys.FNAME.value], prediction[Keys.SLICE.value]
        for name in [n for n in self._pending if n not in names]:
            self._flush(name, pl_module)
        recon = prediction["reconstruction"].cpu().numpy()
        seg = prediction["segmentation"].cpu().numpy()
        for i, (name, index) in enumerate(zip(names, slices)):
            self._pending.setdefault(name, {})[int(index)] = (recon[i], seg[i])

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for name in list(self._pending):
            self._flush(name, pl_module)
        print(f"medmtl predict: predictions -> {self.output_dir}")

    def _flush(self, name: str, pl_module: LightningModule) -> None:
        slices = self._pending.pop(name)
        order = sorted(slices)
        write_predictions(
            self.output_dir / os.path.basename(name),
            np.stack([slices[i][0] for i in order]),
            np.stack([slices[i][1] for i in order]),
            pl_module.class_names,
        )
