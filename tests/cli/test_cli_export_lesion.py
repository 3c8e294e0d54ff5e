"""`medmtl export` on a lesion checkpoint: a tiny det-only ``LesionNet`` (3 slices 3 mm apart, no clinical
inputs) exported through the real CLI, its printed verification and metadata, reloaded by ``open_onnx`` at
another batch and size than the trace with identical decoded detections, and refused by the k-space path."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
from lesion_files import save_lesion_checkpoint
from test_cli_recon_seg import write_input

from medmtl.cli import main
from medmtl.inference import Predictor
from medmtl.lesion_export import compare_lesion, lesion_random_case
from medmtl.onnx_model import (
    META_CONTRACT,
    META_SOURCE,
    META_TASKS,
    OnnxLesionNetwork,
    open_onnx,
    read_metadata,
)

CLASS_PATH = "medmtl.models.lesion_net.LesionNet"
DET_ONLY = {
    "num_tags": 3,
    "tasks": ["det"],
    "widths": [4, 8],
    "refine_hidden": 4,
    "num_slices": 3,
    "interval_mm": 3.0,
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, str]:
    """(checkpoint, its ONNX export, what `medmtl export` printed)."""
    folder = tmp_path_factory.mktemp("lesion_cli")
    checkpoint = save_lesion_checkpoint(folder / "lesion.ckpt", DET_ONLY, perturb=0.2)
    output = folder / "lesion.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", "--checkpoint", str(checkpoint), "--output", str(output)]) == 0
    return checkpoint, output, printed.getvalue()


def test_cli_export_prints_and_records_the_verification(exported):
    checkpoint, path, printed = exported
    lines = printed.splitlines()
    assert lines[1].startswith(f"{path} (fp32")
    assert lines[2].split()[:2] == ["real", "1x3x117x95"] and lines[3].split()[:2] == ["random", "3x3x37x29"]
    assert all("detections" in line and "agreement 100.0 %" in line for line in lines[2:])
    metadata = read_metadata(path)
    assert json.loads(metadata[META_TASKS]) == ["det"]
    contract = {
        "num_slices": 3,
        "interval_mm": 3.0,
        "window": None,
        "num_clinical": 0,
        "refine_position": "array",
    }
    assert json.loads(metadata[META_CONTRACT]) == contract
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert metadata[META_SOURCE] == f"lesion.ckpt sha256:{digest}"


def test_det_only_export_runs_at_another_size_with_identical_detections(exported):
    checkpoint, path, _ = exported
    net = Predictor.from_checkpoint(checkpoint, require_segmentation=False).model
    onnx_net = open_onnx(path)
    assert isinstance(onnx_net, OnnxLesionNetwork)
    assert [i.name for i in onnx_net.session.get_inputs()] == ["context", "slice_position"]
    assert onnx_net.outputs == ["heatmap", "size", "offset"]
    errors = compare_lesion(net, onnx_net, "t", lesion_random_case(net, 3, 48, 36, seed=3))
    assert max(errors.output_max_rel.values()) <= 1e-4
    assert errors.same_count and errors.torch_detections > 0 and errors.box_max_abs <= 1e-3
    # Without the refinement the slice position is not needed, as with LesionNet.
    context = lesion_random_case(net, 2, 20, 28)[0]
    with torch.inference_mode():
        want = net(context)
    got = onnx_net(context)
    assert got.tags is got.mask is got.refined_heatmap is None
    assert (got.heatmap - want.heatmap).abs().max() <= 1e-4 * want.heatmap.abs().max()


def test_kspace_path_refuses_a_lesion_model(exported, tmp_path, make_kspace, capsys):
    src = write_input(tmp_path / "in" / "scan.h5", make_kspace, (1, 2, 32, 30))
    code = main(
        ["recon-seg", "--onnx", str(exported[1]), "--input", str(src), "--output", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "holds a 'lesion' model" in err, err


def test_shipped_lesion_onnx_is_the_export_of_the_shipped_checkpoint():
    import hashlib
    from pathlib import Path

    from medmtl.onnx_model import META_SOURCE, OnnxLesionNetwork, read_metadata

    folder = Path(__file__).resolve().parents[2] / "models" / "lesion_mni"
    digest = hashlib.sha256((folder / "model.ckpt").read_bytes()).hexdigest()
    assert read_metadata(folder / "model.onnx")[META_SOURCE] == f"model.ckpt sha256:{digest}"
    network = OnnxLesionNetwork(folder / "model.onnx")
    assert network.num_slices == 9 and network.interval_mm == 2.0 and len(network.tag_names) == 14
