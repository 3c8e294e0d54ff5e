"""TimeBudget: the step count and the cosine learning rate fitted to a wall-clock budget."""

from __future__ import annotations

import csv
import itertools
import json
import math

import pytest
import torch
from fit_probe import TINY_NET, tiny_config

from medmtl.cli import main
from medmtl.lightning import TimeBudget

# 20 s of budget, timed over steps 2-5, nothing held back; the tiny network under a 1000-step cosine.
BUDGET = {
    "class_path": "medmtl.lightning.TimeBudget",
    "init_args": {"seconds": 20, "skip": 2, "measure": 3, "reserve": 0.0},
}
MODEL = {
    "model": {"class_path": "medmtl.models.recon_seg.ReconSegNet", "init_args": TINY_NET},
    "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}},
    "scheduler": {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR", "init_args": {"T_max": 1000}},
    "scheduler_interval": "step",
    "panel_every_n_val_steps": 0,
}


def _clock(monkeypatch, seconds_per_reading: int) -> None:
    ticks = itertools.count(step=seconds_per_reading)
    monkeypatch.setattr(TimeBudget, "_clock", staticmethod(lambda: float(next(ticks))))


def test_budget_sets_steps_and_cosine_and_validates_the_last_step(tmp_path, monkeypatch):
    # A clock that advances one second per reading: start at 0, then one reading per step, so the timed
    # steps 2-5 take 1 s each and 20 s * (1 - 0) - 5 s elapsed leaves 15 more steps: max_steps 20.
    _clock(monkeypatch, 1)
    config = tiny_config(
        tmp_path,
        callbacks=[BUDGET, {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}],
        trainer={
            "max_steps": 1000,
            "val_check_interval": 500,  # never reached: only the stop at the last step validates
            "check_val_every_n_epoch": None,
            "logger": {"class_path": "medmtl.lightning.CSVLogger", "init_args": {"save_dir": str(tmp_path)}},
        },
        model=MODEL,
        data={"samples_per_epoch": 1000},
    )
    assert main(["fit", "-c", str(config)]) == 0
    ckpt = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=False)
    assert ckpt["global_step"] == 20
    assert ckpt["lr_schedulers"][0]["T_max"] == 20
    assert [s for k, s in ckpt["callbacks"].items() if k.startswith("TimeBudget")] == [{"max_steps": 20}]
    # The last step was validated although val_check_interval is 500.
    fit = json.loads(next(tmp_path.rglob("metrics.json")).read_text())["fit"]
    assert fit["global_step"] == 20 and "val/loss" in fit["metrics"]
    # The learning rate follows a cosine that ends at step 20 (the rate logged at step s is the one used there).
    rows = tmp_path.rglob("metrics.csv")
    logged = {
        int(r["step"]): float(r["lr-Adam"])
        for f in rows
        for r in csv.DictReader(f.open())
        if r.get("lr-Adam")
    }
    for step in (10, 15, 19):
        assert logged[step] == pytest.approx(0.01 * (1 + math.cos(math.pi * step / 20)) / 2, rel=1e-5)


def test_budget_is_kept_across_a_resume(tmp_path, monkeypatch):
    """A run resumed after TimeBudget chose keeps the choice (step count and cosine), even on a clock that would
    choose otherwise."""
    _clock(monkeypatch, 1)
    config = tiny_config(tmp_path, callbacks=[BUDGET], trainer={"max_steps": 1000}, model=MODEL)
    assert main(["fit", "-c", str(config)]) == 0  # chose 20 at step 5 (as above), a checkpoint every step
    (middle,) = (tmp_path / "run" / "checkpoints").glob("*step=10.ckpt")
    # Resumed at step 10 on a clock ten times slower: choosing again would stop at step 14 (no time left).
    _clock(monkeypatch, 10)
    assert main(["fit", "-c", str(config), "--ckpt_path", str(middle)]) == 0
    final = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 20 and final["lr_schedulers"][0]["T_max"] == 20


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seconds": 0},
        {"seconds": 10, "measure": 0},
        {"seconds": 10, "reserve": 1.0},
        {"seconds": 10, "skip": -1},
    ],
)
def test_bad_budget_is_one_clear_error(kwargs):
    with pytest.raises(ValueError, match="TimeBudget needs"):
        TimeBudget(**kwargs)
