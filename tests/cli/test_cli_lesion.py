"""`medmtl lesion`: the findings JSON, instance NIfTI and PNGs of a round trip, untouched inputs, and one-line
errors with exit 2 for bad inputs, models and options."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from lesion_files import raw_nifti, save_lesion_checkpoint
from PIL import Image

from medmtl.cli import main
from medmtl.cli.lesion import _DEFAULTS_SHOWN
from medmtl.data.lesion_nifti import read_lesion_nifti
from medmtl.lesion_inference import DEFAULT_BATCH_SIZE, LesionPredictor
from medmtl.models.lesion_decode import decode_detections

SHAPE = (32, 30, 12)
# Axes permuted, one flipped, anisotropic voxels, off-origin: the output geometry must follow.
AFFINE = np.array([[0, -0.9, 0, 14.0], [0.8, 0, 0, -20.0], [0, 0, 2.5, 31.0], [0, 0, 0, 1]])


TINY = {"widths": [4, 8], "refine_hidden": 4}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_lesion_checkpoint(tmp_path_factory.mktemp("ckpt") / "lesion.ckpt", TINY, seed=2)


def write_volume(path: Path, seed: int = 0) -> Path:
    """A CT-like int16 volume stored with scl_inter = -1024, a bright blob on slices 4..6."""
    rng = np.random.default_rng(seed)
    stored = rng.normal(1024, 30, SHAPE)
    stored[10:16, 12:19, 4:7] += 400
    image = nib.Nifti1Image(stored.astype(np.int16), AFFINE)
    image.header.set_slope_inter(1.0, -1024.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lesion(*args) -> int:
    return main(["lesion", *map(str, args)])


def test_round_trip(tmp_path, checkpoint):
    src = write_volume(tmp_path / "in" / "scan.nii.gz")
    before = digest(src)
    # A threshold that keeps a few findings of the untrained net, so that a few PNGs are drawn.
    everything = LesionPredictor.load(checkpoint).predict_volume(read_lesion_nifti(src)).findings
    threshold = everything[min(2, len(everything) - 1)].score
    expected = LesionPredictor.load(checkpoint, score_threshold=threshold).predict_volume(
        read_lesion_nifti(src)
    )
    out = tmp_path / "out" / "nested"
    assert (
        lesion(
            "--checkpoint", checkpoint, "--input", src.parent, "--output", out, "--score-threshold", threshold
        )
        == 0
    )
    assert digest(src) == before

    data = json.loads((out / "scan_findings.json").read_text())
    assert data == json.loads(json.dumps(expected.to_json()))
    rows = data["findings"]
    assert 1 <= len(rows) and [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert all(len(r["tags"]) == 14 and r["score"] >= round(threshold, 6) for r in rows)

    written = nib.load(out / "scan_instances.nii.gz")
    source = nib.load(src)
    assert written.shape == SHAPE and written.get_data_dtype() == np.int32
    np.testing.assert_allclose(written.affine, source.affine)
    for field in ("sform_code", "qform_code", "pixdim", "xyzt_units"):
        np.testing.assert_array_equal(written.header[field], source.header[field])
    labels = np.asarray(written.dataobj)
    np.testing.assert_array_equal(labels, expected.instances)
    assert written.header.get_intent()[0] == "label"

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(f"scan_finding{n}.png" for n in range(1, len(rows) + 1))
    for name in pngs:
        with Image.open(out / name) as png:
            assert png.format == "PNG" and png.size[0] > 100
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_no_png_and_a_file_input(tmp_path, checkpoint):
    src = write_volume(tmp_path / "one.nii", seed=1)
    assert (
        lesion(
            "--checkpoint",
            checkpoint,
            "--input",
            src,
            "--output",
            tmp_path / "o",
            "--no-png",
            "--score-threshold",
            0.5,
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["one_findings.json", "one_instances.nii.gz"]
    # an untrained net scores about 0.1: nothing at 0.5, an empty list and an empty label volume
    assert json.loads((tmp_path / "o" / "one_findings.json").read_text()) == {"findings": []}
    assert not np.asarray(nib.load(tmp_path / "o" / "one_instances.nii.gz").dataobj).any()


def _bytes(n: int) -> bytes:
    return np.random.default_rng(5).integers(0, 256, n, dtype=np.uint8).tobytes()


def _good_bytes(tmp: Path) -> bytes:
    return write_volume(tmp / "good" / "x.nii").read_bytes()


BAD_INPUTS = {
    "zero voxel size": lambda tmp: raw_nifti(
        tmp / "v.nii.gz", (8, 8, 4), "int16", bytes(512), zooms=(1, 0, 1)
    ),
    "non-finite voxel size": lambda tmp: raw_nifti(
        tmp / "v.nii", (8, 8, 4), "int16", bytes(512), zooms=(1, math.nan, 1)
    ),
    "2D image": lambda tmp: raw_nifti(tmp / "v.nii", (8, 8), "int16", bytes(128), zooms=(1, 1)),
    "corrupt": lambda tmp: _write(tmp / "v.nii.gz", _bytes(2000)),
    "truncated .nii.gz": lambda tmp: _write(tmp / "v.nii.gz", gzip.compress(_good_bytes(tmp))[:3000]),
    "truncated .nii": lambda tmp: _write(tmp / "v.nii", _good_bytes(tmp)[:5000]),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def assert_one_line_error(rc: int, stderr: str, *words: str) -> None:
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medmtl: error: "), stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_files(tmp_path, checkpoint, capfd, caplog, kind):
    bad = BAD_INPUTS[kind](tmp_path)
    before = digest(bad)
    folder = tmp_path / "in"
    folder.mkdir()
    good = write_volume(folder / "a.nii.gz")
    target = folder / ("z" + "".join(bad.suffixes))  # after the good volume: nothing is written for it either
    target.write_bytes(bad.read_bytes())
    capfd.readouterr()
    rc = lesion("--checkpoint", checkpoint, "--input", folder, "--output", tmp_path / "out")
    assert_one_line_error(rc, capfd.readouterr().err, str(target))
    # nibabel logs header warnings through its own stderr handler, which no capture fixture sees
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert digest(target) == before and digest(bad) == before
    assert not (tmp_path / "out").exists()
    assert good.exists()


@pytest.mark.parametrize("kind", ["missing", "empty folder", "not NIfTI"])
def test_bad_input_paths(tmp_path, checkpoint, capfd, kind):
    path = tmp_path / "nothing.nii.gz"
    if kind == "empty folder":
        path = tmp_path / "empty"
        path.mkdir()
        (path / "notes.txt").write_text("no volumes here")
    elif kind == "not NIfTI":
        path = tmp_path / "volume.mha"
        path.write_bytes(b"x")
    rc = lesion("--checkpoint", checkpoint, "--input", path, "--output", tmp_path / "out")
    assert_one_line_error(rc, capfd.readouterr().err, str(path))
    assert not (tmp_path / "out").exists()


def test_bad_models_and_options(tmp_path, checkpoint, capfd):
    src = write_volume(tmp_path / "in" / "v.nii.gz")
    base = ["--input", src, "--output", tmp_path / "out"]
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    cases = [
        (["--onnx", onnx], ("model.onnx",)),  # not an ONNX file
        (["--checkpoint", tmp_path / "missing.ckpt"], ("missing.ckpt", "no such")),
        (["--checkpoint", src], ("v.nii.gz", "not a PyTorch checkpoint")),
        (["--checkpoint", checkpoint, "--batch-size", 0], ("--batch-size",)),
        (["--checkpoint", checkpoint, "--score-threshold", 2], ("--score-threshold",)),
    ]
    for args, words in cases:
        assert_one_line_error(lesion(*args, *base), capfd.readouterr().err, *words)
    assert not (tmp_path / "out").exists()


def test_a_network_that_reads_age_and_sex(tmp_path, capfd):
    ckpt = save_lesion_checkpoint(tmp_path / "clinical.ckpt", {**TINY, "num_clinical": 2}, seed=2)
    src = write_volume(tmp_path / "in" / "v.nii.gz")
    args = ["--checkpoint", ckpt, "--input", src, "--output", tmp_path / "out", "--no-png"]
    assert_one_line_error(lesion(*args), capfd.readouterr().err, str(src), "--age", "--sex")
    assert lesion(*args, "--age", 61, "--sex", "M") == 0


def test_outputs_never_replace_inputs_or_each_other(tmp_path, checkpoint, capfd):
    folder = write_volume(tmp_path / "in" / "v.nii.gz").parent
    write_volume(folder / "v_instances.nii.gz")
    before = digest(folder / "v_instances.nii.gz")
    rc = lesion("--checkpoint", checkpoint, "--input", folder, "--output", folder)
    assert_one_line_error(rc, capfd.readouterr().err, "overwrite an input")
    assert digest(folder / "v_instances.nii.gz") == before
    twin = write_volume(tmp_path / "other" / "v.nii")
    rc = lesion(
        "--checkpoint", checkpoint, "--input", folder / "v.nii.gz", twin, "--output", tmp_path / "out"
    )
    assert_one_line_error(rc, capfd.readouterr().err, "same name")


def test_help_shows_the_defaults_in_use():
    assert _DEFAULTS_SHOWN["batch_size"] == DEFAULT_BATCH_SIZE
    default = inspect.signature(decode_detections).parameters["score_threshold"].default
    assert _DEFAULTS_SHOWN["score_threshold"] == default


@pytest.mark.slow  # starting Python and torch takes 10 to 30 s on a busy 2-core machine
def test_console_script_reports_one_line(tmp_path, checkpoint):
    """The real entry point: a missing input, exit 2 and one stderr line (no traceback, no progress bar)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medmtl.cli",
            "lesion",
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(tmp_path / "no.nii"),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert_one_line_error(proc.returncode, proc.stderr, "no.nii", "no such file")


@pytest.mark.parametrize("position", ["array", "patient"])
def test_onnx_and_checkpoint_give_the_same_findings(tmp_path, checkpoint, position):
    from medmtl.inference import load_network
    from medmtl.lesion_export import export_lesion_onnx

    if position == "patient":  # spread weights, so that the refinement reads the volume's patient frames
        args = {**TINY, "refine_position": "patient"}
        checkpoint = save_lesion_checkpoint(tmp_path / "patient.ckpt", args, seed=2, perturb=0.1)
    onnx = tmp_path / "lesion.onnx"
    export_lesion_onnx(load_network(checkpoint)[0], onnx)
    src = write_volume(tmp_path / "in" / "scan.nii.gz")
    for name, model in (("ckpt", ["--checkpoint", checkpoint]), ("onnx", ["--onnx", onnx])):
        assert lesion(*model, "--input", src, "--output", tmp_path / name, "--no-png") == 0
    mine, theirs = (
        json.loads((tmp_path / n / "scan_findings.json").read_text())["findings"] for n in ("ckpt", "onnx")
    )
    assert len(mine) == len(theirs) > 0
    for a, b in zip(mine, theirs):
        assert a["box_voxel"] == b["box_voxel"] and a["key_slice"] == b["key_slice"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
    labels = [nib.load(tmp_path / n / "scan_instances.nii.gz").get_fdata() for n in ("ckpt", "onnx")]
    np.testing.assert_array_equal(*labels)
