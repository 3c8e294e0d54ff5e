"""The trainer part of the config layer that a benchmark puts last on `medmtl fit` for each of its runs.

JSON is YAML, so a benchmark writes the layer as JSON and passes it with ``-c``.
"""

from __future__ import annotations

from pathlib import Path


def trainer_layer(run: Path, steps: int, val_check_interval: int, callbacks: tuple[dict, ...] = ()) -> dict:
    """``steps`` steps into folder ``run`` (its CSV log, ``metrics.json``, ``step_times.json`` and
    ``checkpoints/last.ckpt``), a validation every ``val_check_interval`` steps; ``callbacks`` are added to
    the last-checkpoint writer, ``MetricsJSON`` and ``StepTimer``."""
    return {
        "max_steps": steps,
        "val_check_interval": val_check_interval,
        "default_root_dir": str(run),
        "logger": {
            "class_path": "medmtl.lightning.CSVLogger",
            "init_args": {"save_dir": str(run.parent), "name": run.name, "version": ""},
        },
        "callbacks": [
            {
                "class_path": "medmtl.lightning.ModelCheckpoint",
                "init_args": {"save_last": True, "save_top_k": 0, "enable_version_counter": False},
            },
            {"class_path": "medmtl.lightning.MetricsJSON"},
            {"class_path": "medmtl.lightning.StepTimer"},
            *callbacks,
        ],
    }
