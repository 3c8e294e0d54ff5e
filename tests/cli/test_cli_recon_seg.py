"""`medmtl recon-seg`: the predictions layout, input units, untouched inputs, and one-line errors with exit 2."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import TINY_NET, save_fit_checkpoint

from medmtl.cli import main
from medmtl.inference import Predictor
from medmtl.io.kspace import KSpaceFile, write_kspace_h5
from medmtl.keys import MNI_CLASSES
from medmtl.models.recon_seg import ReconSegNet


def save_checkpoint(
    path: Path, init_args: dict, state_from: dict | None = None, perturb: float = 0.0, **hparams
) -> Path:
    """A `medmtl fit`-shaped checkpoint of a ``ReconSegNet`` (``conftest.save_fit_checkpoint``): weights of
    ``state_from`` (default ``init_args``), config ``init_args``, MNI class names."""
    torch.manual_seed(0)
    net = ReconSegNet(**(state_from or init_args))
    return save_fit_checkpoint(path, net, init_args, perturb, class_names=list(MNI_CLASSES), **hparams)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", TINY_NET)


def column_mask(width: int, acceleration: int, center: int) -> np.ndarray:
    mask = np.zeros(width, np.float32)
    mask[::acceleration] = 1
    start = (width - center + 1) // 2
    mask[start : start + center] = 1
    return mask


def write_input(path: Path, make_kspace, shape=(2, 3, 64, 70), scale: float = 1.0, **extra) -> Path:
    slices, coils, h, w = shape
    kspace, _ = make_kspace(7, slices, coils, h, w)
    mask = column_mask(w, 4, 8)
    return write_kspace_h5(path, scale * kspace * mask, mask=mask, **extra)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recon_seg(*args: str) -> int:
    return main(["recon-seg", *args])


@pytest.mark.parametrize("shape", [(2, 3, 64, 70), (1, 1, 67, 64)])
def test_round_trip_layout(tmp_path, make_kspace, checkpoint, shape):
    src = write_input(tmp_path / "in" / "scan.h5", make_kspace, shape)
    before = digest(src)
    assert (
        recon_seg(
            "--checkpoint", str(checkpoint), "--input", str(src.parent), "--output", str(tmp_path / "out")
        )
        == 0
    )
    assert digest(src) == before
    with h5py.File(tmp_path / "out" / "scan.h5") as f:
        recon, seg = f["reconstruction"], f["segmentation"]
        assert recon.shape == seg.shape == (shape[0], *shape[2:])
        assert recon.dtype == np.float32 and seg.dtype == np.uint8
        assert np.isfinite(recon[()]).all() and int(seg[()].max()) < len(MNI_CLASSES)
        assert json.loads(f.attrs["classes"]) == list(MNI_CLASSES)


def test_reconstruction_is_in_input_units(tmp_path, make_kspace, checkpoint):
    for name, scale in (("unit", 1.0), ("big", 1000.0)):
        write_input(tmp_path / "in" / f"{name}.h5", make_kspace, scale=scale)
    assert (
        recon_seg(
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
        )
        == 0
    )
    with h5py.File(tmp_path / "out" / "unit.h5") as a, h5py.File(tmp_path / "out" / "big.h5") as b:
        np.testing.assert_allclose(
            b["reconstruction"][()], 1000 * a["reconstruction"][()], rtol=1e-3, atol=1e-3
        )
        # An untrained model's logits sit near ties, where float rounding (2e-6 here) can flip an argmax.
        agree = np.mean(b["segmentation"][()] == a["segmentation"][()])
        assert agree >= 0.999, agree


def test_png_panels_and_batching(tmp_path, make_kspace, checkpoint):
    target = np.ones((3, 64, 70), np.float32)
    src = write_input(tmp_path / "scan.h5", make_kspace, (3, 2, 64, 70), target=target)
    args = ["--checkpoint", str(checkpoint), "--input", str(src), "--png", "--batch-size", "2"]
    assert recon_seg(*args, "--output", str(tmp_path / "out")) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        f"scan_slice{i:03d}.png" for i in range(3)
    ]
    # batching must not change the result
    assert recon_seg(*args[:-2], "--batch-size", "1", "--output", str(tmp_path / "one")) == 0
    with h5py.File(tmp_path / "out" / "scan.h5") as a, h5py.File(tmp_path / "one" / "scan.h5") as b:
        np.testing.assert_allclose(a["reconstruction"][()], b["reconstruction"][()], rtol=1e-4, atol=1e-6)


def test_exit_code_zero_from_the_console_script(tmp_path, make_kspace, checkpoint):
    src = write_input(tmp_path / "scan.h5", make_kspace, (1, 2, 64, 64))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "medmtl.cli",
            "recon-seg",
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(src),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "scan.h5").is_file()


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("medmtl: error: ")
    return lines[0]


def _bad_checkpoints(tmp: Path) -> dict[str, tuple[Path, str]]:
    random_file = tmp / "random.ckpt"
    random_file.write_bytes(np.random.default_rng(0).bytes(4096))
    other = tmp / "other.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.ones(2)}, "hyper_parameters": {"lr": 0.1}}, other)
    foreign = tmp / "foreign.ckpt"
    torch.save(
        {"state_dict": {}, "hyper_parameters": {"model": {"class_path": "os.system", "init_args": {}}}},
        foreign,
    )
    pickled = tmp / "pickled.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": ReconSegNet(**TINY_NET)}}, pickled)
    wider = {**TINY_NET, "chans": 4}
    mismatch = save_checkpoint(tmp / "mismatch.ckpt", wider, state_from=TINY_NET)
    recon_only = save_checkpoint(tmp / "recon.ckpt", {**TINY_NET, "mode": "recon"})
    return {
        "missing": (tmp / "missing.ckpt", "no such checkpoint"),
        "folder": (tmp, "folder"),
        "random": (random_file, "not a PyTorch checkpoint"),
        "other_module": (other, "no network configuration"),
        "foreign_class": (foreign, "not part of medmtl"),
        "pickled": (pickled, "pickled"),
        "mismatch": (mismatch, "do not match"),
        "recon_only": (recon_only, "segmentation"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing", "folder", "random", "other_module", "foreign_class", "pickled", "mismatch", "recon_only"],
)
def test_bad_checkpoint_is_one_line_and_exit_2(tmp_path, make_kspace, capsys, case):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    ckpt, words = _bad_checkpoints(folder)[case]
    src = write_input(tmp_path / "scan.h5", make_kspace, (1, 2, 64, 64))
    assert recon_seg("--checkpoint", str(ckpt), "--input", str(src), "--output", str(tmp_path / "out")) == 2
    line = _one_error_line(capsys)
    assert str(ckpt) in line and words in line, line
    assert not (tmp_path / "out").exists()


def test_corrupt_input_is_one_line_and_exit_2(tmp_path, checkpoint, bad_kspace_file, capsys):
    path, words = bad_kspace_file
    assert (
        recon_seg("--checkpoint", str(checkpoint), "--input", str(path), "--output", str(tmp_path / "out"))
        == 2
    )
    line = _one_error_line(capsys)
    assert str(path) in line and all(w in line for w in words), line
    assert not (tmp_path / "out").exists()


def test_a_bad_file_among_good_ones_stops_before_any_output(tmp_path, make_kspace, checkpoint, capsys):
    write_input(tmp_path / "in" / "a.h5", make_kspace, (1, 2, 64, 64))
    kspace, _ = make_kspace(3, 2, 2, 64, 64)
    kspace[1, 0, 5, 5] = np.nan  # in the last slice of the last file: only reading every slice finds it
    with h5py.File(tmp_path / "in" / "b.h5", "w") as f:
        f.create_dataset("kspace", data=kspace)
    assert (
        recon_seg(
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
        )
        == 2
    )
    line = _one_error_line(capsys)
    assert "b.h5" in line and "NaN" in line, line
    assert not (tmp_path / "out").exists()


def test_never_overwrites_an_input(tmp_path, make_kspace, checkpoint, capsys):
    src = write_input(tmp_path / "scan.h5", make_kspace, (1, 2, 64, 64))
    before = digest(src)
    assert recon_seg("--checkpoint", str(checkpoint), "--input", str(src), "--output", str(tmp_path)) == 2
    assert "overwritten" in _one_error_line(capsys)
    assert digest(src) == before


def test_mask_without_a_centre_is_an_error(tmp_path, make_kspace, checkpoint, capsys):
    kspace, _ = make_kspace(8, 1, 2, 64, 64)
    mask = np.zeros(64, np.float32)
    mask[1::4] = 1  # misses the centre column 32
    src = write_kspace_h5(tmp_path / "scan.h5", kspace * mask, mask=mask)
    assert (
        recon_seg("--checkpoint", str(checkpoint), "--input", str(src), "--output", str(tmp_path / "out"))
        == 2
    )
    line = _one_error_line(capsys)
    assert "scan.h5" in line and "centre" in line


def test_mirror_tta_is_the_default_and_no_tta_runs_one_pass(tmp_path, make_kspace, checkpoint):
    src = write_input(tmp_path / "scan.h5", make_kspace, (2, 2, 64, 70))
    with KSpaceFile(src) as f:
        kspace, mask = np.stack([f.read_slice(i)["kspace"] for i in range(f.num_slices)]), f.mask()
    for flags, tta in (((), True), (("--no-tta",), False)):
        out = tmp_path / f"out_{tta}"
        assert (
            recon_seg("--checkpoint", str(checkpoint), "--input", str(src), "--output", str(out), *flags) == 0
        )
        recon, seg = Predictor.from_checkpoint(checkpoint, tta=tta).predict_volume(kspace, mask)
        with h5py.File(out / "scan.h5") as f:
            np.testing.assert_allclose(f["reconstruction"][()], recon, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(f["segmentation"][()], seg)
    with (
        h5py.File(tmp_path / "out_True" / "scan.h5") as a,
        h5py.File(tmp_path / "out_False" / "scan.h5") as b,
    ):
        assert not np.allclose(a["reconstruction"][()], b["reconstruction"][()])
