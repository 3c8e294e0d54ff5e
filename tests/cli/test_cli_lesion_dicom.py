"""`medmtl lesion` on a DICOM series folder: the same findings as the same volume given as NIfTI, outputs in the
series' patient geometry, untouched DICOM files, and one-line errors with exit 2 for a broken series."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_files import write_series
from lesion_files import save_lesion_checkpoint
from test_cli_lesion import TINY, assert_one_line_error

from medmtl.cli import main
from medmtl.data.lesion_nifti import read_lesion_nifti
from medmtl.io.dicom import read_dicom_series
from medmtl.lesion_inference import LesionPredictor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_lesion_checkpoint(tmp_path_factory.mktemp("ckpt") / "lesion.ckpt", TINY, seed=2)


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_dicom_series_gives_what_its_nifti_gives(tmp_path, checkpoint):
    folder, _ = write_series(tmp_path / "series_a", num_slices=6, step_mm=2.0)
    before = digests(folder)
    series = read_dicom_series(folder)
    # The same volume as NIfTI, for the reference findings.
    nifti = tmp_path / "nifti" / "series_a.nii.gz"
    nifti.parent.mkdir()
    nib.save(nib.Nifti1Image(series.image, series.affine), nifti)
    reference = LesionPredictor.load(checkpoint)
    everything = reference.predict_volume(read_lesion_nifti(nifti)).findings
    threshold = everything[min(2, len(everything) - 1)].score
    expected = LesionPredictor.load(checkpoint, score_threshold=threshold).predict_volume(
        read_lesion_nifti(nifti)
    )

    out = tmp_path / "out"
    rc = main(
        [
            "lesion",
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(folder),
            "--output",
            str(out),
            "--score-threshold",
            str(threshold),
            "--no-png",
        ]
    )
    assert rc == 0
    assert digests(folder) == before  # the series is read, never written
    findings = json.loads((out / "series_a_findings.json").read_text())
    assert findings == json.loads(json.dumps(expected.to_json())) and findings["findings"]
    labels = nib.load(out / "series_a_instances.nii.gz")
    np.testing.assert_allclose(labels.affine, series.affine, atol=1e-5)
    assert labels.shape == (128, 128, 6) and labels.header["sform_code"] == 1
    np.testing.assert_array_equal(np.asarray(labels.dataobj), expected.instances)
    # Equal findings with the NIfTI written with the series' affine (checked against DICOM's own equation in
    # tests/io/test_dicom.py) means equal patient-space boxes too.


@pytest.mark.parametrize("kind", ["missing slice", "truncated slice", "two series"])
def test_a_broken_series_is_one_line_and_exit_2(tmp_path, checkpoint, capfd, kind):
    folder, _ = write_series(tmp_path / "s", num_slices=4)
    files = sorted(
        folder.glob("*.dcm"), key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber)
    )
    if kind == "missing slice":
        files[1].unlink()
    elif kind == "truncated slice":
        files[2].write_bytes(files[2].read_bytes()[:30000])
    else:
        write_series(folder, num_slices=2, prefix="other", name="MR_small.dcm")
    before = digests(folder)
    capfd.readouterr()
    rc = main(
        ["lesion", "--checkpoint", str(checkpoint), "--input", str(folder), "--output", str(tmp_path / "out")]
    )
    words = {
        "missing slice": ["missing slice"],
        "truncated slice": [str(files[2])],
        "two series": ["2 image series"],
    }
    assert_one_line_error(rc, capfd.readouterr().err, *words[kind])
    assert digests(folder) == before
    assert not (tmp_path / "out").exists()


def test_outputs_inside_the_dicom_folder_are_refused(tmp_path, checkpoint, capfd):
    """They would be read as the folder's NIfTI volumes the next time, instead of its series."""
    folder, _ = write_series(tmp_path / "s", num_slices=3)
    before = digests(folder)
    capfd.readouterr()
    rc = main(
        ["lesion", "--checkpoint", str(checkpoint), "--input", str(folder), "--output", str(folder / "out")]
    )
    assert_one_line_error(
        rc, capfd.readouterr().err, "is a DICOM input folder", "choose an --output outside it"
    )
    assert digests(folder) == before


@pytest.mark.parametrize("tilt_mm", [0.0, 0.5])
def test_the_label_volume_keeps_a_gantry_tilt_in_its_sform_only(tmp_path, checkpoint, tilt_mm):
    """An untilted series gets qform and sform; a tilted one (a sheared affine, which a qform cannot hold) the
    sform only, so that no reader places the labels by a qform that lost the shear."""
    folder, _ = write_series(tmp_path / "s", num_slices=3, step_mm=2.0, tilt_mm=tilt_mm)
    out = tmp_path / "out"
    rc = main(
        ["lesion", "--checkpoint", str(checkpoint), "--input", str(folder), "--output", str(out), "--no-png"]
    )
    assert rc == 0
    labels = nib.load(out / "s_instances.nii.gz")
    np.testing.assert_allclose(labels.affine, read_dicom_series(folder).affine, atol=1e-5)
    assert int(labels.header["sform_code"]) == 1
    assert int(labels.header["qform_code"]) == (1 if tilt_mm == 0 else 0)


def test_age_and_sex_come_from_the_headers_and_the_options_fill_gaps(tmp_path, capfd):
    """A network that reads age and sex: CT_small says sex "O" (no input the network knows) and age 000Y,
    MR_small sex F and no age. What the headers lack, --sex and --age give; the headers never override them."""
    clinical = save_lesion_checkpoint(tmp_path / "clinical.ckpt", {**TINY, "num_clinical": 2}, seed=3)
    ct, _ = write_series(tmp_path / "ct", num_slices=3)
    mr, _ = write_series(tmp_path / "mr", num_slices=3, name="MR_small.dcm")
    base = ["lesion", "--checkpoint", str(clinical), "--no-png"]
    capfd.readouterr()
    rc = main([*base, "--input", str(ct), "--output", str(tmp_path / "o1")])
    assert_one_line_error(rc, capfd.readouterr().err, "no sex", "--sex")
    assert main([*base, "--input", str(ct), "--output", str(tmp_path / "o2"), "--sex", "F"]) == 0
    rc = main([*base, "--input", str(mr), "--output", str(tmp_path / "o3")])
    assert_one_line_error(rc, capfd.readouterr().err, "no age", "--age")
    assert main([*base, "--input", str(mr), "--output", str(tmp_path / "o4"), "--age", "40"]) == 0
