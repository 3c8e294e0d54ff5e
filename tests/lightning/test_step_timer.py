"""StepTimer: one wall time per training step and the run's peak memory, written at the end of fit."""

from __future__ import annotations

import json

from fit_probe import tiny_config

from medmtl.cli import main


def test_step_times_cover_every_step(tmp_path):
    timer = {"class_path": "medmtl.lightning.StepTimer", "init_args": {"skip": 1}}
    config = tiny_config(tmp_path, callbacks=[timer], trainer={"max_steps": 3})
    assert main(["fit", "-c", str(config)]) == 0
    summary = json.loads((tmp_path / "run" / "step_times.json").read_text())
    assert summary["steps"] == 3 and len(summary["seconds"]) == 3
    assert all(s > 0 for s in summary["seconds"])
    assert min(summary["seconds"][1:]) <= summary["median_s"] <= max(summary["seconds"][1:])
    assert summary["peak_rss_mib"] > 50  # torch alone takes more
    assert "peak_cuda_mib" not in summary
