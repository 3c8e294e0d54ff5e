"""``export_lesion_onnx`` and ``OnnxLesionNetwork``: a tiny ``LesionNet`` with every head and two clinical inputs,
exported once (traced at 2 x 32 x 40) and verified on the default cases, then reloaded by onnxruntime at other
batches and sizes (same raw outputs, identical decoded detections), its metadata and input contract, reduced
precision (slow), and broken or mismatched files. The det-only network goes through the CLI in
``tests/cli/test_cli_export_lesion.py``."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_NET

import medmtl.export as export_module
import medmtl.lesion_export as lesion_export_module
from medmtl.errors import InputError
from medmtl.export import TOLERANCES, ExportError, export_onnx, format_report
from medmtl.lesion_export import (
    LESION_TOLERANCES,
    LesionTolerance,
    compare_lesion,
    export_lesion_onnx,
    lesion_random_case,
)
from medmtl.models.lesion_decode import decode_detections
from medmtl.models.lesion_net import LesionNet, LesionOutput
from medmtl.models.recon_seg import ReconSegNet
from medmtl.onnx_model import (
    META_CONTRACT,
    META_NORMALISATION,
    META_OUTPUTS,
    META_PRECISION,
    META_TAG_NAMES,
    META_TASK,
    META_TASKS,
    META_VERIFICATION,
    META_VERSION,
    OnnxLesionNetwork,
    OnnxNetwork,
    open_onnx,
    read_metadata,
)

TINY_LESION = {"num_tags": 3, "widths": (4, 8), "refine_hidden": 4}
FULL = {"num_clinical": 2, "tag_names": ("cyst", "solid", "calcified"), "window": (-0.05, 1.8)}


def tiny_lesion_net(perturb: float = 0.2, **kwargs) -> LesionNet:
    """A tiny seeded ``LesionNet`` whose weights are spread by ``perturb`` (the refinement starts as the
    identity and the heatmap at a constant prior, which would hide both)."""
    torch.manual_seed(0)
    net = LesionNet(**TINY_LESION, **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(perturb * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(network, its verified fp32 export, the export's report)."""
    net = tiny_lesion_net(**FULL)
    path = tmp_path_factory.mktemp("lesion_export") / "lesion.onnx"
    return net, path, export_lesion_onnx(net, path, source="tiny sha256:0")


def test_export_records_contract_and_verification(exported):
    _, path, report = exported
    metadata = read_metadata(path)
    assert metadata[META_TASK] == "lesion" and metadata[META_PRECISION] == "fp32"
    assert json.loads(metadata[META_TASKS]) == ["det", "tag", "mask", "refine"]
    assert json.loads(metadata[META_TAG_NAMES]) == list(FULL["tag_names"])
    contract = {
        "num_slices": 9,
        "interval_mm": 2.0,
        "window": [-0.05, 1.8],
        "num_clinical": 2,
        "refine_position": "array",
    }
    assert json.loads(metadata[META_CONTRACT]) == contract
    assert "[-0.05, 1.8]" in metadata[META_NORMALISATION]
    assert json.loads(metadata[META_OUTPUTS]) == list(LesionOutput._fields)
    assert metadata[META_VERSION]
    assert json.loads(metadata[META_VERIFICATION]) == json.loads(
        json.dumps([asdict(c) for c in report.cases])
    )
    real, random = report.cases
    assert (real.name, real.shape) == ("real", (1, 9, 117, 95))  # a lesion slice of a 2 mm simulated volume
    assert (random.name, random.shape) == ("random", (3, 9, 37, 29))
    for case in report.cases:
        assert max(case.output_max_rel.values()) <= 1e-4 and case.torch_detections > 0
        assert case.same_count and case.box_max_abs <= 1e-3 and case.score_max_abs <= 1e-4
    text = format_report(report)
    assert "real" in text and "random" in text and "detections" in text
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["context", "slice_position", "clinical"]
    context = graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in context] == [True, False, True, True] and context[1].dim_value == 9
    assert not list(path.parent.glob(".lesion.onnx*"))  # no temporary folder left


@pytest.mark.parametrize(("batch", "height", "width"), [(3, 48, 36), (1, 29, 51)])
def test_onnxruntime_gives_the_same_detections_at_other_sizes(exported, batch, height, width):
    net, path, _ = exported
    onnx_net = OnnxLesionNetwork(path)
    inputs = lesion_random_case(net, batch, height, width, seed=5)
    errors = compare_lesion(net, onnx_net, "t", inputs)
    assert max(errors.output_max_rel.values()) <= 1e-4
    assert errors.same_count and errors.torch_detections > 0
    assert errors.box_max_abs <= 1e-3 and errors.score_max_abs <= 1e-4

    got = onnx_net(*inputs)
    assert got.mask.shape == (batch, 1, height, width) and got.heatmap.shape[-2:] == (
        -(-height // 4),
        -(-width // 4),
    )
    with torch.inference_mode():
        want = net(*inputs)
    options = {"pixel_spacing": [0.7, 0.9]}
    for a, b in zip(decode_detections(got, **options), decode_detections(want, **options), strict=True):
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_allclose(a.long_axis_mm, b.long_axis_mm, atol=1e-4)


# "contour" (not shipped) is the slowest export, and "box" is a part of the shipped "outline" head: both run with
# the slow tests (`make test-slow`).
@pytest.mark.parametrize(
    "tag_pooling",
    [
        "cell",
        pytest.param("box", marks=pytest.mark.slow),
        pytest.param("contour", marks=pytest.mark.slow),
        "outline",
    ],
)
def test_a_refinement_on_patient_positions_takes_the_frame(tmp_path, tag_pooling):
    net = tiny_lesion_net(**FULL, refine_position="patient", tag_pooling=tag_pooling)
    path = tmp_path / "patient.onnx"
    report = export_lesion_onnx(net, path)
    for case in report.cases:
        assert max(case.output_max_rel.values()) <= 1e-4 and case.same_count and case.torch_detections > 0
    assert [i.name for i in onnx.load(path).graph.input] == [
        "context",
        "slice_position",
        "clinical",
        "patient_frame",
    ]
    assert json.loads(read_metadata(path)[META_CONTRACT])["refine_position"] == "patient"
    onnx_net = OnnxLesionNetwork(path)
    assert onnx_net.reads_patient_frame and onnx_net.refine_position == "patient"
    inputs = lesion_random_case(net, 2, 33, 27, seed=4)
    errors = compare_lesion(net, onnx_net, "t", inputs)
    assert max(errors.output_max_rel.values()) <= 1e-4 and errors.same_count
    context, position, clinical, frame = inputs
    moved = frame.clone()
    moved[:, 0, 2] += 80.0  # 8 cm to the right: the refinement reads it, the raw heads do not
    a, b = onnx_net(context, position, clinical, frame), onnx_net(context, position, clinical, moved)
    torch.testing.assert_close(a.heatmap, b.heatmap)
    torch.testing.assert_close(a.tags, b.tags)
    assert not torch.allclose(a.refined_tags, b.refined_tags)
    with pytest.raises(InputError, match=r"patient_frame: the score refinement needs \(2, 3, 3\)"):
        onnx_net(context, position, clinical)


def test_loader_carries_the_input_contract(exported):
    net, path, _ = exported
    onnx_net = open_onnx(path)
    assert isinstance(onnx_net, OnnxLesionNetwork)
    names = ("tasks", "tag_names", "num_slices", "interval_mm", "window", "num_clinical", "num_tags")
    for name in (*names, "refine_position", "reads_patient_frame"):
        assert getattr(onnx_net, name) == getattr(net, name), name


def test_loader_checks_inputs_as_lesion_net_does(exported):
    net, path, _ = exported
    onnx_net = OnnxLesionNetwork(path)
    context, position, clinical = lesion_random_case(net, 2, 20, 24)
    with pytest.raises(InputError, match=r"context: expected \(B, 9, H, W\)"):
        onnx_net(context[:, :3], position, clinical)
    with pytest.raises(InputError, match="clinical: the score refinement needs"):
        onnx_net(context, position)
    with pytest.raises(InputError, match="slice_position: the score refinement needs"):
        onnx_net(context, None, clinical)
    with pytest.raises(InputError, match=r"slice_position: expected \(2,\)"):
        onnx_net(context, position[:1], clinical)


def _with_metadata(src: Path, dest: Path, **changes: str) -> Path:
    model = onnx.load(src)
    for prop in model.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    onnx.save(model, dest)
    return dest


def _with_contract(src: Path, dest: Path, **changes) -> Path:
    contract = json.loads(read_metadata(src)[META_CONTRACT])
    return _with_metadata(src, dest, **{META_CONTRACT: json.dumps({**contract, **changes})})


def _bit_flipped(src: Path, dest: Path) -> Path:
    data = bytearray(src.read_bytes())
    for i in range(0, len(data), 97):
        data[i] ^= 0xFF
    dest.write_bytes(bytes(data))
    return dest


BAD_FILES = {
    "missing": (lambda src, p: p, "no such ONNX file"),
    "truncated": (
        lambda src, p: (p.write_bytes(src.read_bytes()[:5000]), p)[1],
        "is not a loadable ONNX model",
    ),
    "bit-flipped": (_bit_flipped, "is not a loadable ONNX model"),
    "recon-seg": (
        lambda src, p: _with_metadata(src, p, **{META_TASK: "recon_seg"}),
        "holds a 'recon_seg' model",
    ),
    "contract": (
        lambda src, p: _with_metadata(src, p, **{META_CONTRACT: "{"}),
        "is not a lesion input contract",
    ),
    "window": (lambda src, p: _with_contract(src, p, window=[2, 1]), "window [2, 1] is not (low, high)"),
    "slices": (
        lambda src, p: _with_contract(src, p, num_slices=3),
        "takes 9 context slices, but its metadata says 3",
    ),
    "clinical": (lambda src, p: _with_contract(src, p, num_clinical=0), "has graph inputs"),
    "tasks": (
        lambda src, p: _with_metadata(src, p, **{META_TASKS: '["recon", "seg"]'}),
        "are not lesion tasks",
    ),
    "outputs": (
        lambda src, p: _with_metadata(src, p, **{META_TASKS: '["det", "tag"]'}),
        "need ['heatmap', 'size'",
    ),
    "tag names": (
        lambda src, p: _with_metadata(src, p, **{META_TAG_NAMES: "[1, 2]"}),
        "is not a list of strings",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_or_mismatched_file_gives_one_input_error(exported, tmp_path, case):
    build, message = BAD_FILES[case]
    bad = build(exported[1], tmp_path / "bad.onnx")
    with pytest.raises(InputError, match=re.escape(message)) as err:
        open_onnx(bad) if case != "recon-seg" else OnnxLesionNetwork(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_recon_seg_loader_refuses_a_lesion_model_and_open_onnx_an_unknown_task(exported, tmp_path):
    with pytest.raises(InputError, match="holds a 'lesion' model; this needs a 'recon_seg' model"):
        OnnxNetwork(exported[1])
    other = _with_metadata(exported[1], tmp_path / "other.onnx", **{META_TASK: "detection3d"})
    with pytest.raises(
        InputError, match="holds a 'detection3d' model; this medmtl runs 'recon_seg' and 'lesion'"
    ):
        open_onnx(other)


def test_failed_verification_leaves_no_file(exported, tmp_path, monkeypatch):
    """An export that does not match within tolerance fails and writes nothing (the trace is replaced by a copy
    of the good export, so only verification runs)."""
    net, path, _ = exported

    class Program:
        def save(self, dest):
            shutil.copy(path, dest)

    monkeypatch.setattr(export_module.torch.onnx, "export", lambda *a, **k: Program())
    strict = LesionTolerance(rel=0.0, mask_agreement=1.0, detection_agreement=1.0, box_px=0.0, score=0.0)
    monkeypatch.setitem(lesion_export_module.LESION_TOLERANCES, "fp32", strict)
    output = tmp_path / "out" / "model.onnx"
    cases = {"random": lesion_random_case(net, 1, 24, 20)}
    with pytest.raises(
        ExportError, match=r"does not match PyTorch: random input \(1, 9, 24, 20\): \w+ max relative"
    ):
        export_lesion_onnx(net, output, cases=cases)
    assert list(output.parent.iterdir()) == []


def test_each_exporter_refuses_the_other_network(tmp_path):
    with pytest.raises(ExportError, match="ReconSegNet is not a LesionNet"):
        export_lesion_onnx(ReconSegNet(**TINY_NET), tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="is not a recon\\+seg network"):
        export_onnx(tiny_lesion_net(), (), tmp_path / "m.onnx")
    with pytest.raises(InputError, match=r"must end in \.onnx"):
        export_lesion_onnx(tiny_lesion_net(), tmp_path / "m.bin")
    with pytest.raises(InputError, match="precision: 'int4'"):
        export_lesion_onnx(tiny_lesion_net(), tmp_path / "m.onnx", precision="int4")
    assert not list(tmp_path.iterdir())


def test_every_precision_has_a_lesion_tolerance():
    assert LESION_TOLERANCES.keys() == TOLERANCES.keys()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_exports_report_their_errors(exported, tmp_path, precision):
    net, _, _ = exported
    report = export_lesion_onnx(net, tmp_path / f"{precision}.onnx", precision=precision)
    tolerance = LESION_TOLERANCES[precision]
    print(format_report(report))
    for case in report.cases:
        worst = max(case.output_max_rel.values())
        assert 1e-5 < worst <= tolerance.rel  # the precision changed the numbers, within the bound
        assert case.mask_agreement >= tolerance.mask_agreement
        assert 0 <= case.detection_agreement <= 1
    metadata = read_metadata(report.path)
    assert metadata[META_PRECISION] == precision
    assert [c["name"] for c in json.loads(metadata[META_VERIFICATION])] == ["real", "random"]
    errors = compare_lesion(
        net, OnnxLesionNetwork(report.path), "t", lesion_random_case(net, 2, 48, 36, seed=7)
    )
    assert max(errors.output_max_rel.values()) <= tolerance.rel
