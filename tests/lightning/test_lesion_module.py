"""MultitaskModule with a LesionNet: evaluation on decoded detections, and `medmtl fit` / `test` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from jsonargparse import Namespace

from medmtl.cli import main
from medmtl.data.lesion_dataset import KeySliceDataset, collate_lesion_samples
from medmtl.data.lesion_geometry import measure_recist
from medmtl.data.lesion_record import Lesion, LesionVolume
from medmtl.keys import Keys
from medmtl.lightning.cli import fill_unrecorded_args
from medmtl.lightning.lesion_eval import LesionEvaluation
from medmtl.models.lesion_decode import STRIDE, encode_targets
from medmtl.models.lesion_net import LesionOutput


def cuboid_volume() -> LesionVolume:
    shape = (40, 48, 8)
    instances = np.zeros(shape, np.int32)
    boxes = [(4, 6, 2, 16, 18, 5), (24, 28, 2, 32, 44, 5), (20, 4, 5, 28, 12, 7)]
    spacing = np.array([0.7, 0.7, 2.0])
    lesions = []
    for n, (i0, j0, k0, i1, j1, k1) in enumerate(boxes, start=1):
        instances[i0:i1, j0:j1, k0:k1] = n
        key = (k0 + k1 - 1) // 2
        long_mm, short_mm = measure_recist(instances[:, :, key] == n, spacing)[:2]
        box = np.array([i0, j0, k0, i1, j1, k1], float)
        lesions.append(Lesion(box, key, (n % 2,), float(long_mm), float(short_mm)))
    image = instances.astype(np.float32)
    return LesionVolume(image, spacing, np.eye(4), instances, tuple(lesions), ("odd", "even"), "c")


def perfect_output(batch: dict) -> LesionOutput:
    """The logits a perfect network would give: peaks, sizes, offsets and tags at the centres, the true mask."""
    b, _, height, width = batch[Keys.CONTEXT].shape
    h, w = -(-height // STRIDE), -(-width // STRIDE)
    heatmap = torch.full((b, 1, h, w), -20.0)
    size, offset, tags = torch.zeros(b, 2, h, w), torch.zeros(b, 2, h, w), torch.full((b, 2, h, w), -20.0)
    mask = torch.full((b, 1, height, width), -20.0)
    for i in range(b):
        t = encode_targets(batch[Keys.BOXES][i], h, w, tags=batch[Keys.TAGS][i])
        u, v = t.cells // w, t.cells % w
        heatmap[i, 0, u, v] = 20.0
        size[i, :, u, v], offset[i, :, u, v] = t.size.T, t.offset.T
        tags[i, :, u, v] = 40 * t.tags.T - 20
        if len(batch[Keys.MASKS][i]):
            mask[i, 0][batch[Keys.MASKS][i].amax(0) > 0] = 20.0
    return LesionOutput(heatmap, None, size, offset, tags, None, mask)


def test_perfect_outputs_score_perfectly():
    data = KeySliceDataset([cuboid_volume()], num_slices=3, interval_mm=2.0)
    batch = collate_lesion_samples([data[i] for i in range(len(data))])
    evaluation = LesionEvaluation(("odd", "even"))
    evaluation.update(perfect_output(batch), batch)
    values, result = evaluation.compute("val", choose_thresholds=True)
    assert result["num_images"] == 2 and result["num_lesions"] == 3  # key slices 3 (two lesions) and 5
    assert values["val/sens@0.5fp_iou0.5"] == 1.0 and values["val/sens@1fp_iou0.1"] == 1.0
    assert values["val/mAP"] == pytest.approx(1.0)
    assert values["val/dice_mean"] == 1.0
    assert values["val/tag_auc_mean"] == 1.0 and values["val/tag_f1_mean"] == 1.0
    assert torch.isfinite(evaluation.tag_thresholds).all()  # chosen on this "validation" set
    assert values["val/long_axis_mae_mm"] == pytest.approx(0.0, abs=1e-6)  # the true masks: the same RECIST


def test_a_tag_without_validation_positives_keeps_f1():
    """A tag with no known positive on validation gets threshold inf (never predicted): a chosen threshold,
    so F1 is still reported for the others."""
    data = KeySliceDataset([cuboid_volume()], num_slices=3, interval_mm=2.0)
    batch = collate_lesion_samples([data[i] for i in range(len(data))])
    for tags in batch[Keys.TAGS]:
        tags[:, 1] = float("nan")  # "even" uncertain everywhere
    evaluation = LesionEvaluation(("odd", "even"))
    evaluation.update(perfect_output(batch), batch)
    values, _ = evaluation.compute("val", choose_thresholds=True)
    assert evaluation.tag_thresholds[1] == float("inf") and values["val/tag_f1_mean"] == 1.0


def test_an_empty_network_finds_nothing():
    data = KeySliceDataset([cuboid_volume()], num_slices=3, interval_mm=2.0)
    batch = collate_lesion_samples([data[i] for i in range(len(data))])
    out = perfect_output(batch)
    out = out._replace(heatmap=torch.full_like(out.heatmap, -20.0))
    evaluation = LesionEvaluation(("odd", "even"))
    evaluation.update(out, batch)
    values, _ = evaluation.compute("test", choose_thresholds=False)
    assert values["test/sens@8fp_iou0.1"] == 0.0
    assert values["test/dice_mean"] == 1.0  # Dice on ground-truth boxes does not need detections
    assert "test/tag_f1_mean" not in values  # no thresholds chosen: F1 is left out


def tiny_lesion_config(root: Path) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 3,
            "val_check_interval": 3,
            "check_val_every_n_epoch": None,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root),
            "logger": False,
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"save_last": True},
                },
                {"class_path": "medmtl.lightning.MetricsJSON"},
            ],
        },
        "model": {
            "model": {
                "class_path": "medmtl.models.lesion_net.LesionNet",
                "init_args": {"widths": [4, 8], "refine_hidden": 4, "num_slices": 3, "interval_mm": 6.0},
            },
            "panel_every_n_val_steps": 0,
        },
        "data": {
            "batch_size": 2,
            "samples_per_epoch": 6,
            "lesions": {
                "num_volumes": {"train": 2, "val": 1, "test": 1},
                "simulation": {"voxel_mm": 6.0, "augment": False},
                "train_crop": [16, 16],
            },
        },
    }
    path = root / "lesion.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_then_test_from_the_cli(tmp_path):
    config = tiny_lesion_config(tmp_path / "run")
    assert main(["fit", "-c", str(config)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["fit"]["metrics"]
    for key in ("train/loss_det", "train/loss_tag", "train/loss_mask", "train/loss_refine", "val/loss"):
        assert np.isfinite(metrics[key]), key
    for key in ("val/sens@1fp_iou0.5", "val/froc_iou0.1", "val/mAP", "val/dice_mean", "val/num_lesions"):
        assert key in metrics, key
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert "lesion_eval.tag_thresholds" in state  # the thresholds chosen on validation travel to `test`
    assert main(["test", "-c", str(config), "--ckpt_path", str(checkpoint)]) == 0
    tested = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["metrics"]
    assert "test/sens@1fp_iou0.5" in tested and tested["test/num_lesions"] >= 0
    assert (tmp_path / "run" / "panels" / "test_lesion_metrics.png").stat().st_size > 0


def test_predict_points_to_the_lesion_command(tmp_path, capsys):
    config = tiny_lesion_config(tmp_path / "run")
    assert main(["predict", "-c", str(config)]) == 2
    assert "medmtl lesion" in capsys.readouterr().err


def test_a_detection_only_network_trains_and_tests(tmp_path):
    """The ablation's first row: no tag head, so no tag metrics and a FROC-only picture."""
    config = tiny_lesion_config(tmp_path / "run")
    override = ["--model.model.init_args.tasks", "[det]"]
    assert main(["fit", "-c", str(config), *override]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert main(["test", "-c", str(config), *override, "--ckpt_path", str(checkpoint)]) == 0
    tested = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["metrics"]
    assert "test/sens@1fp_iou0.5" in tested and "test/tag_auc_mean" not in tested
    assert "test/loss_tag" not in tested
    assert (tmp_path / "run" / "panels" / "test_lesion_metrics.png").stat().st_size > 0


def test_scoring_without_refinement_reads_the_raw_heads():
    data = KeySliceDataset([cuboid_volume()], num_slices=3, interval_mm=2.0)
    batch = collate_lesion_samples([data[i] for i in range(len(data))])
    out = perfect_output(batch)
    # A refinement that silenced every detection: scored with it nothing is found, without it everything.
    out = out._replace(refined_heatmap=torch.full_like(out.heatmap, -20.0))
    results = {}
    for refined in (True, False):
        evaluation = LesionEvaluation(("odd", "even"), refined=refined)
        evaluation.update(out, batch)
        results[refined] = evaluation.compute("test", choose_thresholds=False)[0]["test/sens@1fp_iou0.5"]
    assert results == {True: 0.0, False: 1.0}


def test_thresholds_for_other_tags_load_as_unchosen():
    """A detection-only checkpoint written before such networks had no tag metrics holds 14 thresholds."""
    evaluation = LesionEvaluation(())
    evaluation.load_state_dict({"tag_thresholds": torch.zeros(14)})
    assert evaluation.tag_thresholds.shape == (0,)
    chosen = LesionEvaluation(("odd", "even"))
    chosen.load_state_dict({"tag_thresholds": torch.tensor([0.3, 0.7])})
    assert chosen.tag_thresholds.tolist() == pytest.approx([0.3, 0.7])


def test_patient_positions_and_flips_train_and_old_checkpoints_keep_their_positions(tmp_path):
    config = tiny_lesion_config(tmp_path / "run")
    override = ["--model.model.init_args.refine_position", "patient", "--data.lesions.train_flip", "true"]
    assert main(["fit", "-c", str(config), *override]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=False)
    assert state["hyper_parameters"]["model"]["init_args"]["refine_position"] == "patient"
    # A checkpoint from before refine_position existed, tested with a config that sets it: the checkpoint's
    # network is built as it was trained (array positions), not as the config says.
    del state["hyper_parameters"]["model"]["init_args"]["refine_position"]
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    network = Namespace(
        class_path="medmtl.models.lesion_net.LesionNet", init_args=Namespace(refine_position="patient")
    )
    assert fill_unrecorded_args(network, state["hyper_parameters"]["model"]) == ["refine_position"]
    assert network.init_args.refine_position == "array"
    assert fill_unrecorded_args(network, {"class_path": "other.Net", "init_args": {}}) == []
    assert main(["test", "-c", str(config), *override, "--ckpt_path", str(old)]) == 0


@pytest.mark.parametrize(
    ("class_path", "last_step"), [("lightning.pytorch.callbacks", 2), ("medmtl.lightning", 4)]
)
def test_last_checkpoint_is_the_latest_step_even_when_the_metric_stops_improving(
    tmp_path, class_path, last_step
):
    """A monitored metric that never improves after the first validation (the lesion count is constant):
    Lightning's ModelCheckpoint leaves last.ckpt at that first validation, medmtl's moves it on."""
    config = tiny_lesion_config(tmp_path / "run")
    spec = yaml.safe_load(config.read_text())
    spec["trainer"].update({"max_steps": 4, "val_check_interval": 2})
    spec["trainer"]["callbacks"][0] = {
        "class_path": f"{class_path}.ModelCheckpoint",
        "init_args": {"monitor": "val/num_lesions", "mode": "max", "save_last": True, "filename": "best"},
    }
    config.write_text(yaml.safe_dump(spec))
    assert main(["fit", "-c", str(config)]) == 0
    folder = tmp_path / "run" / "checkpoints"
    assert torch.load(folder / "best.ckpt", weights_only=False)["global_step"] == 2
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == last_step
