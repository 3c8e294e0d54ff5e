"""``medmtl.lightning.CSVLogger`` keeps a resumed run's earlier rows, where Lightning's deletes them."""

from __future__ import annotations

import csv

import pytest
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger

from medmtl.lightning import CSVLogger


def rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def log_run(logger_class, root, steps, extra: str | None = None) -> str:
    logger = logger_class(save_dir=str(root), name="run", version="")
    for step in steps:
        metrics = {"train/loss": 1.0 / (step + 1)}
        if extra:
            metrics[extra] = float(step)
        logger.log_metrics(metrics, step=step)
    logger.save()
    return logger.experiment.metrics_file_path


def test_a_resumed_run_appends_and_widens_the_header(tmp_path):
    log_run(CSVLogger, tmp_path, [0, 1, 2])
    path = log_run(CSVLogger, tmp_path, [3, 4], extra="val/ssim")  # resumed, with a new metric
    got = rows(path)
    assert [r["step"] for r in got] == ["0", "1", "2", "3", "4"]
    assert [r["val/ssim"] for r in got] == ["", "", "", "3.0", "4.0"]
    assert float(got[0]["train/loss"]) == 1.0


@pytest.mark.filterwarnings("ignore:Experiment logs directory")
def test_lightnings_own_logger_loses_them():
    """Why medmtl has its own: if Lightning changes this, the subclass can go."""
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        log_run(LightningCSVLogger, root, [0, 1, 2])
        path = log_run(LightningCSVLogger, root, [3, 4])
        assert [r["step"] for r in rows(path)] == ["3", "4"]
