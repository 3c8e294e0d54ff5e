"""``medmtl data mni``: builds the default dataset in fastMRI layout, deterministically, and rejects bad options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from medmtl.cli import main
from medmtl.data.mni import split_slices
from medmtl.keys import MNI_CLASSES
from medmtl.transforms.masks import PATTERNS

TINY = ["--coils", "2", "--size", "64", "64"]


def run(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_all(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {"attrs": dict(f.attrs), **{name: f[name][()] for name in f}}


def test_builds_a_dataset_that_inspect_reads(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run(
        ["data", "mni", "--out", str(out), "--slices", "80:83", *TINY, "--seed", "1"], capsys
    )
    assert code == 0, err
    path = out / "mni_axial.h5"
    assert stdout.split() == [str(path)]
    data = read_all(path)
    assert data["kspace"].shape == (3, 2, 64, 64) and data["kspace"].dtype == np.complex64
    assert data["target"].shape == data["segmentation"].shape == (3, 64, 64)
    assert data["target"].dtype == np.float32 and data["segmentation"].dtype == np.uint8
    assert data["mask"].shape == (64,)
    # Undersampled as stored: zero in every column the mask leaves out.
    assert not data["kspace"][..., data["mask"] == 0].any()
    attrs = data["attrs"]
    assert json.loads(attrs["classes"]) == list(MNI_CLASSES)
    assert json.loads(attrs["template_slices"]) == [80, 81, 82]
    assert (
        attrs["acceleration"] == 4
        and attrs["mask_pattern"] == "equispaced"
        and attrs["orientation"] == "axial"
    )

    code, stdout, err = run(["data", "inspect", str(out)], capsys)
    assert code == 0, err
    assert "slices=3 coils=2 HxW=64x64" in stdout and "accel=4.00x" in stdout


def test_default_split_writes_train_and_val_folders(tmp_path, capsys):
    code, _, err = run(
        ["data", "mni", "--out", str(tmp_path), "--split", "val", *TINY, "--orientation", "sagittal"], capsys
    )
    assert code == 0, err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.h5")) == [
        "val/mni_sagittal.h5"
    ]
    attrs = read_all(tmp_path / "val" / "mni_sagittal.h5")["attrs"]
    assert tuple(json.loads(attrs["template_slices"])) == split_slices("sagittal", "val")


def test_same_seed_same_data_other_seed_other_data(tmp_path, capsys):
    args = ["data", "mni", "--slices", "90:92", *TINY, "--mask", "random", "--noise", "0.05"]
    built = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert run([*args, "--out", str(tmp_path / name), "--seed", seed], capsys)[0] == 0
        built[name] = read_all(tmp_path / name / "mni_axial.h5")
    a, b, c = built["a"], built["b"], built["c"]
    assert a.keys() == b.keys()
    for key in ("kspace", "mask", "target", "segmentation"):
        assert a[key].tobytes() == b[key].tobytes(), key
    assert a["attrs"] == b["attrs"]
    assert not np.array_equal(a["kspace"], c["kspace"]) and not np.array_equal(a["mask"], c["mask"])
    np.testing.assert_array_equal(a["target"], c["target"])  # the template does not depend on the seed


def test_a_slice_does_not_depend_on_its_range(tmp_path, capsys):
    for name, spec in (("wide", "80:84"), ("narrow", "82:83")):
        assert run(["data", "mni", "--out", str(tmp_path / name), "--slices", spec, *TINY], capsys)[0] == 0
    wide = read_all(tmp_path / "wide" / "mni_axial.h5")["kspace"][2]
    narrow = read_all(tmp_path / "narrow" / "mni_axial.h5")["kspace"][0]
    np.testing.assert_array_equal(wide, narrow)


BAD = {
    "zero_coils": (["--coils", "0"], "num_coils"),
    "negative_noise": (["--noise", "-1"], "noise_level"),
    "reversed_slices": (["--slices", "5:2"], "slices"),
    "slices_outside": (["--slices", "0:999"], "slices"),
    "unknown_mask": (["--mask", "spiral"], "spiral"),
    "unpaired_fractions": (["--acceleration", "4", "8", "--center-fraction", "0.1"], "same length"),
    "acceleration_below_1": (["--acceleration", "0.5"], ">= 1"),
    "centre_too_big": (["--acceleration", "8", "--center-fraction", "0.5"], "centre fraction"),
    "tiny_size": (["--size", "10", "10"], "size"),
    "unknown_orientation": (["--orientation", "oblique"], "invalid choice"),
    "not_a_number": (["--coils", "many"], "invalid int"),
    "slices_and_split": (["--slices", "1:2", "--split", "val"], "not allowed with"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_option_is_one_line_exit_2(case, tmp_path, capsys):
    extra, words = BAD[case]
    out = tmp_path / "out"
    slices = [] if "--slices" in extra else ["--slices", "80:81"]  # keep the valid cases cheap
    code, _, err = run(["data", "mni", "--out", str(out), *slices, *extra], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and words in lines[0], err
    assert not list(out.rglob("*.h5"))


def test_out_must_be_a_folder(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    code, _, err = run(["data", "mni", "--out", str(target), "--slices", "80:81", *TINY], capsys)
    assert code == 2 and err.startswith(f"medmtl: error: {target}: ")


def test_help_names_every_mask_pattern(capsys):
    code, stdout, _ = run(["data", "mni", "--help"], capsys)
    assert code == 0
    for pattern in PATTERNS:
        assert pattern in stdout


def test_console_script_reports_bad_value():
    proc = subprocess.run(
        [sys.executable, "-m", "medmtl.cli", "data", "mni", "--out", "unused", "--coils", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "medmtl: error: num_coils: must be a whole number >= 1, got 0"
    ]
