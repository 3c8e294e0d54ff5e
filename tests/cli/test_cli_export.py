"""`medmtl export` and the ONNX inference path: a tiny joint model exported once through the real CLI, then
reloaded by onnxruntime at other sizes, batches and coil counts, run through `recon-seg --onnx`, and fed
broken or foreign files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_NET
from test_cli_recon_seg import save_checkpoint, write_input

import medmtl.export as export_module
from medmtl.cli import main
from medmtl.errors import InputError
from medmtl.export import ExportError, Tolerance, compare, export_onnx, random_case
from medmtl.inference import Predictor
from medmtl.keys import MNI_CLASSES
from medmtl.models.recon_seg import ReconSegNet
from medmtl.onnx_model import (
    META_CLASSES,
    META_SOURCE,
    META_TASK,
    META_VERIFICATION,
    OnnxNetwork,
    read_metadata,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, its ONNX export) of a tiny joint network with perturbed weights."""
    folder = tmp_path_factory.mktemp("export")
    checkpoint = save_checkpoint(folder / "tiny.ckpt", TINY_NET, perturb=0.05)
    output = folder / "tiny.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(output)]) == 0
    return checkpoint, output


def test_export_writes_metadata_and_its_verification(exported):
    checkpoint, path = exported
    metadata = read_metadata(path)
    assert metadata[META_TASK] == "recon_seg"
    assert json.loads(metadata[META_CLASSES]) == list(MNI_CLASSES)
    assert metadata[META_SOURCE].startswith(f"{checkpoint.name} sha256:")
    cases = {c["name"]: c for c in json.loads(metadata[META_VERIFICATION])}
    assert cases["real"]["shape"] == [1, 8, 197, 233, 2]  # a default MNI validation slice, 8 coils
    assert cases["random"]["shape"][1] != 3  # another coil count than the trace's
    for case in cases.values():
        assert case["recon_max_rel"] <= 1e-4 and case["seg_agreement"] >= 0.999
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["kspace", "mask", "acs_mask"]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in [*graph.input, *graph.output])
    assert not list(path.parent.glob(".tiny.onnx*"))  # no temporary folder left


@pytest.mark.parametrize(("batch", "coils", "height", "width"), [(1, 1, 45, 38), (3, 6, 64, 51)])
def test_onnxruntime_matches_pytorch_at_other_sizes(exported, batch, coils, height, width):
    checkpoint, path = exported
    net = Predictor.from_checkpoint(checkpoint).model
    errors = compare(net, OnnxNetwork(path), "t", random_case(batch, coils, height, width, seed=5))
    assert errors.recon_max_rel <= 1e-4
    assert errors.seg_agreement >= 0.999


def test_onnxruntime_matches_pytorch_with_a_mask_that_varies_along_h(exported):
    # The exported data consistency takes one W x W product for masks equal in every row and 2D transforms
    # for others (an ONNX If on the mask); the verification cases are line masks, this one is not.
    checkpoint, path = exported
    net = Predictor.from_checkpoint(checkpoint).model
    kspace, mask, acs = random_case(2, 4, 40, 36, seed=7)
    holes = (torch.rand(mask.shape, generator=torch.Generator().manual_seed(8)) < 0.3).float()
    mask = torch.maximum(mask * (1 - holes), acs)
    errors = compare(net, OnnxNetwork(path), "2d", (kspace * mask, mask, acs))
    assert errors.recon_max_rel <= 1e-4
    assert errors.seg_agreement >= 0.999


@pytest.mark.slow
@pytest.mark.parametrize("segment_refined", [False, True])
def test_a_network_with_conjugate_gradient_data_consistency_and_a_refiner_exports_and_verifies(
    tmp_path, segment_refined
):
    # dc: cg unrolls its CG solves into the graph, through the same shared data-consistency terms (whose step
    # the default run checks against eager PyTorch: test_data_consistency.py); a second export takes minutes.
    net = {
        **TINY_NET,
        "dc": "cg",
        "cg_iterations": 3,
        "refine_chans": 2,
        "refine_pools": 1,
        "segment_refined": segment_refined,
    }  # the shipped kind (False), and the one segmenting the refined magnitude
    checkpoint = save_checkpoint(tmp_path / "cg.ckpt", net, perturb=0.05)
    output = tmp_path / "cg.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(output)]) == 0
    net = Predictor.from_checkpoint(checkpoint).model
    kspace, mask, acs = random_case(2, 4, 40, 36, seed=7)
    holes = (torch.rand(mask.shape, generator=torch.Generator().manual_seed(8)) < 0.3).float()
    for name, m in (("lines", mask), ("2d", torch.maximum(mask * (1 - holes), acs))):
        errors = compare(net, OnnxNetwork(output), name, (kspace * m, m, acs))
        assert errors.recon_max_rel <= 1e-4
        assert errors.seg_agreement >= 0.999


def test_recon_seg_cli_gives_the_same_predictions_from_onnx(tmp_path, make_kspace, exported):
    checkpoint, path = exported
    src = write_input(tmp_path / "in" / "scan.h5", make_kspace, (2, 4, 50, 46), scale=37.0)
    args = ["recon-seg", "--input", str(src), "--output"]
    assert main([*args, str(tmp_path / "torch"), "--checkpoint", str(checkpoint)]) == 0
    assert main([*args, str(tmp_path / "onnx"), "--onnx", str(path), "--batch-size", "2"]) == 0
    with h5py.File(tmp_path / "torch" / "scan.h5") as a, h5py.File(tmp_path / "onnx" / "scan.h5") as b:
        ra, rb = a["reconstruction"][()], b["reconstruction"][()]
        assert np.abs(ra - rb).max() <= 1e-4 * np.abs(ra).max()
        assert (a["segmentation"][()] == b["segmentation"][()]).mean() >= 0.999
        assert a.attrs["classes"] == b.attrs["classes"]


def _foreign_onnx(path: Path) -> Path:
    """A valid ONNX model that medmtl did not write (an Identity)."""
    tensor = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    out = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [tensor], [out])
    onnx.save(onnx.helper.make_model(graph), path)
    return path


def _other_task(exported_path: Path, path: Path) -> Path:
    model = onnx.load(exported_path)
    for prop in model.metadata_props:
        if prop.key == META_TASK:
            prop.value = "lesion"
    onnx.save(model, path)
    return path


def _truncated(exported_path: Path, path: Path) -> Path:
    data = exported_path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bit_flipped(exported_path: Path, path: Path) -> Path:
    data = bytearray(exported_path.read_bytes())
    for i in range(0, len(data), 97):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


BAD_FILES = {
    "missing": (lambda src, p: p, "no such ONNX file"),
    "folder": (lambda src, p: (p.mkdir(), p)[1], "is a folder"),
    "text": (lambda src, p: (p.write_text("not a model\n"), p)[1], "is not a loadable ONNX model"),
    "truncated": (_truncated, "is not a loadable ONNX model"),
    "bit-flipped": (_bit_flipped, "is not a loadable ONNX model"),
    "foreign": (lambda src, p: _foreign_onnx(p), "not one written by `medmtl export`"),
    "other task": (_other_task, "holds a 'lesion' model"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_onnx_file_gives_one_line_and_exit_2(tmp_path, make_kspace, exported, capsys, case):
    build, message = BAD_FILES[case]
    bad = build(exported[1], tmp_path / "bad.onnx")
    src = write_input(tmp_path / "in" / "scan.h5", make_kspace, (1, 2, 32, 30))
    code = main(["recon-seg", "--onnx", str(bad), "--input", str(src), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err and str(bad) in err, err
    assert not (tmp_path / "out" / "scan.h5").exists()


def test_onnx_model_refuses_a_gpu_device(exported):
    with pytest.raises(InputError, match="runs on the CPU"):
        Predictor(OnnxNetwork(exported[1]), MNI_CLASSES, device="meta")


def test_failed_verification_leaves_no_file(exported, tmp_path, monkeypatch):
    """A graph that does not match PyTorch within tolerance fails the export and writes nothing (the trace is
    replaced by a copy of the good export, so only verification runs)."""

    class Program:
        def save(self, path):
            shutil.copy(exported[1], path)

    monkeypatch.setattr(export_module.torch.onnx, "export", lambda *a, **k: Program())
    monkeypatch.setitem(export_module.TOLERANCES, "fp32", Tolerance(recon_rel=0.0, seg_agreement=1.0))
    net = Predictor.from_checkpoint(exported[0]).model
    output = tmp_path / "out" / "model.onnx"
    with pytest.raises(ExportError, match="onnxruntime does not match PyTorch: random input"):
        export_onnx(net, MNI_CLASSES, output, cases={"random": random_case(1, 2, 24, 20)})
    assert list(output.parent.iterdir()) == []


def test_export_refuses_what_inference_cannot_run(tmp_path):
    with pytest.raises(ExportError, match="seg_target"):
        export_onnx(ReconSegNet(mode="seg_target", **TINY_NET), MNI_CLASSES, tmp_path / "m.onnx")
    with pytest.raises(InputError, match=r"must end in \.onnx"):
        export_onnx(ReconSegNet(**TINY_NET), MNI_CLASSES, tmp_path / "m.bin")
    assert (
        main(["export", "--checkpoint", str(tmp_path / "none.ckpt"), "--output", str(tmp_path / "m.onnx")])
        == 2
    )
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize(("flag", "precision"), [("--fp16", "fp16"), ("--quantize", "int8")])
def test_reduced_precision_exports_verify_and_run(exported, tmp_path, flag, precision):
    output = tmp_path / f"{precision}.onnx"
    assert main(["export", "--checkpoint", str(exported[0]), "--output", str(output), flag]) == 0
    net = Predictor.from_checkpoint(exported[0]).model
    errors = compare(net, OnnxNetwork(output), "t", random_case(2, 3, 41, 33, seed=7))
    tolerance = export_module.TOLERANCES[precision]
    assert errors.recon_max_rel <= tolerance.recon_rel and errors.seg_agreement >= tolerance.seg_agreement


def test_shipped_onnx_is_the_export_of_the_shipped_checkpoint():
    folder = Path(__file__).resolve().parents[2] / "models" / "recon_seg_mni"
    metadata = read_metadata(folder / "model.onnx")
    digest = hashlib.sha256((folder / "model.ckpt").read_bytes()).hexdigest()
    assert metadata[META_SOURCE] == f"model.ckpt sha256:{digest}"
    for case in json.loads(metadata[META_VERIFICATION]):
        assert case["recon_max_rel"] <= 1e-4 and case["seg_agreement"] >= 0.999


@pytest.mark.slow
def test_int8_export_of_a_network_whose_convolutions_build_their_weights(tmp_path):
    """Complex convolutions of 32 or more input channels run by the Gauss trick on the CPU, which builds their
    real weights in the graph; the int8 export must still quantise and verify (it once raised a bare
    ValueError from onnxruntime's quantiser)."""
    wide = {**TINY_NET, "chans": 32, "pools": 1, "num_cascades": 1}
    checkpoint = save_checkpoint(tmp_path / "wide.ckpt", wide, perturb=0.05)
    output = tmp_path / "wide_int8.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(output), "--quantize"]) == 0
    ops = [node.op_type for node in onnx.load(output).graph.node]
    # Every convolution quantised, the Gauss trick's (weights built in the graph) included.
    assert "ConvInteger" in ops and "Conv" not in ops
