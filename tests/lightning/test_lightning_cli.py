"""`medmtl fit|validate|test|predict` through LightningCLI: a tiny real run, and one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import TINY_NET

from medmtl.cli import main
from medmtl.io.kspace import write_kspace_h5

REPO = Path(__file__).resolve().parents[2]


def tiny_config(root: Path, **data) -> Path:
    """A config that trains the real network for 2 steps on 64 x 64 simulated slices, writing into ``root``."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root / "run"),  # = the logger's folder, where evaluations write too
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(root), "name": "run", "version": ""},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"save_last": True, "enable_version_counter": False},
                },
                {"class_path": "medmtl.lightning.MetricsJSON"},
                {
                    "class_path": "medmtl.lightning.PredictionWriter",
                    "init_args": {"output_dir": str(root / "pred")},
                },
            ],
        },
        "model": {
            "model": {"class_path": "medmtl.models.recon_seg.ReconSegNet", "init_args": TINY_NET},
            "panel_every_n_val_steps": 1,
        },
        "data": {
            "batch_size": 2,
            "samples_per_epoch": 4,
            "val_slices": "74:76",
            "augment": False,
            "simulation": {"num_coils": 4, "size": [64, 64]},
            **data,
        },
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """A run folder after `medmtl fit` of the tiny config, run as a subprocess through the console script."""
    root = tmp_path_factory.mktemp("fit")
    config = tiny_config(root)
    out = subprocess.run(
        [sys.executable, "-m", "medmtl.cli", "fit", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"metrics -> {root / 'run' / 'metrics.json'}" in out.stdout
    assert "checkpoint -> " in out.stdout
    return root


def test_fit_writes_checkpoint_metrics_panel_and_config(fitted):
    run = fitted / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    assert list((run / "panels").glob("*.png"))
    entry = json.loads((run / "metrics.json").read_text())["fit"]
    assert entry["global_step"] == 2
    assert entry["checkpoint"].endswith("last.ckpt")
    assert {"train/loss", "val/ssim", "val/dice_grey_matter"} <= set(entry["metrics"])


def test_validate_with_the_same_config_adds_its_entry(fitted, capsys):
    run = fitted / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    kept = {name: (run / name).read_text() for name in ("metrics.csv", "config.yaml")}
    assert main(["validate", "-c", str(fitted / "tiny.yaml"), "--ckpt_path", str(ckpt)]) == 0
    entries = json.loads((run / "metrics.json").read_text())
    assert {"fit", "validate"} <= set(entries)
    assert np.isfinite(entries["validate"]["metrics"]["val/psnr"])
    assert entries["validate"]["checkpoint"] == str(ckpt)
    # the training run's log and config survive an evaluation in the same folder
    assert {name: (run / name).read_text() for name in kept} == kept
    assert (run / "panels" / "validate_batch00000.png").is_file()


def test_test_and_predict_on_a_folder(fitted, make_kspace, tmp_path):
    kspace, image = make_kspace(5, 2, 4, 64, 70)
    mask = np.zeros(70, bool)
    mask[::4] = True
    mask[31:39] = True
    folder = tmp_path / "files"
    seg = (image > 0.5).astype(np.uint8)
    write_kspace_h5(folder / "a.h5", kspace * mask, mask=mask, target=image, segmentation=seg)
    ckpt = str(fitted / "run" / "checkpoints" / "last.ckpt")
    config = str(fitted / "tiny.yaml")
    assert (
        main(
            [
                "test",
                "-c",
                config,
                "--ckpt_path",
                ckpt,
                "--data.test_dir",
                str(folder),
                "--data.batch_size",
                "1",
            ]
        )
        == 0
    )
    assert "test" in json.loads((fitted / "run" / "metrics.json").read_text())
    assert main(["predict", "-c", config, "--ckpt_path", ckpt, "--data.predict_dir", str(folder)]) == 0
    with h5py.File(fitted / "pred" / "a.h5") as f:
        assert f["reconstruction"].shape == (2, 64, 70) and f["reconstruction"].dtype == np.float32
        assert f["segmentation"].dtype == np.uint8
        assert json.loads(f.attrs["classes"]) == ["other", "grey_matter", "white_matter"]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--model.no_such_key", "1"], "no_such_key"),
        (["--trainer.max_steps", "many"], "max_steps"),
        (["--data.batch_size", "0"], "batch_size"),
        (["--model.model.init_args.mode", "telepathy"], "telepathy"),
        (["--trainer.gradient_clip_val", "1.0"], "gradient_clip_val"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys, extra, words):
    config = tiny_config(tmp_path)
    code = main(["fit", "-c", str(config), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "error:" in err[0] and words in err[0], err


def test_unknown_key_in_the_yaml_and_missing_file(tmp_path, capsys):
    config = tiny_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["model"]["learning_rate"] = 0.1
    config.write_text(yaml.safe_dump(data))
    assert main(["fit", "-c", str(config)]) == 2
    assert main(["fit", "-c", str(tmp_path / "missing.yaml")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "learning_rate" in lines[0] and "missing.yaml" in lines[1], lines


def test_bad_config_in_a_subprocess_has_no_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "medmtl.cli", "fit", "-c", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "nope.yaml" in out.stderr


@pytest.mark.parametrize(
    ("names", "network"),
    [
        (["recon_seg_mni.yaml"], "ReconSegNet"),
        (["demo_cpu.yaml"], "ReconSegNet"),
        (["recon_seg_mni.yaml", "recon_seg_mni_gpu.yaml"], "TimeBudget"),
        (["recon_seg_mni.yaml", "recon_seg_mni_cpu.yaml", "recon_seg_mni_cg.yaml"], "dc: cg"),
        (
            [
                "recon_seg_mni.yaml",
                "recon_seg_mni_cpu.yaml",
                "recon_seg_mni_cg.yaml",
                "recon_seg_mni_refine.yaml",
            ],
            "init_weights: models/recon_seg_mni/cg_stage.ckpt",
        ),
        (
            ["recon_seg_mni.yaml", "recon_seg_mni_gpu.yaml", "recon_seg_mni_gpu_cg.yaml"],
            "init_weights: models/recon_seg_mni/refine_stage.ckpt",
        ),
        (
            ["recon_seg_mni.yaml", "recon_seg_mni_gpu.yaml", "recon_seg_mni_gpu_refined.yaml"],
            "segment_refined: true",
        ),
        (["lesion_mni.yaml"], "tag_pooling: outline"),
        (["lesion_mni.yaml", "lesion_mni_outline.yaml"], "init_weights: models/lesion_mni/box_stage.ckpt"),
    ],
)
def test_shipped_configs_parse(names, network, capsys):
    # --print_config parses and validates the whole file (and overlays) without building anything.
    files = [arg for name in names for arg in ("-c", str(REPO / "configs" / name))]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *files, "--print_config"])
    assert exit_info.value.code == 0
    assert network in capsys.readouterr().out


def test_recon_seg_reads_the_fit_checkpoint(fitted, make_kspace, tmp_path):
    kspace, _ = make_kspace(6, 2, 3, 80, 66)
    mask = np.zeros(66, np.float32)
    mask[::8] = 1
    mask[31:35] = 1
    src = write_kspace_h5(tmp_path / "scan.h5", kspace * mask, mask=mask)
    ckpt = fitted / "run" / "checkpoints" / "last.ckpt"
    assert (
        main(["recon-seg", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(tmp_path / "out")])
        == 0
    )
    with h5py.File(tmp_path / "out" / "scan.h5") as f:
        assert f["reconstruction"].shape == f["segmentation"].shape == (2, 80, 66)
