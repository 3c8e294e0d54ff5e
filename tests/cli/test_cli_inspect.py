"""``medmtl data inspect`` through the real console script, and the numbers it prints."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ifft2c_np
from skimage.metrics import structural_similarity

from medmtl.data.inspect import format_line, inspect_file, slice_ssim
from medmtl.io.kspace import KSpaceFile


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medmtl.cli", "data", "inspect", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def test_bad_input_is_one_line_exit_2_and_file_unchanged(bad_kspace_file):
    path, words = bad_kspace_file
    before = digest(path)
    out = run_cli(path)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"medmtl: error: {path}: ")
    for word in words:
        assert word in lines[0]
    assert out.stdout == ""
    assert digest(path) == before


def test_good_files_and_folder(fastmri_train_h5, fastmri_test_h5, medmtl_h5, tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    for src, name in ((medmtl_h5, "b.h5"), (fastmri_test_h5, "a.h5")):
        shutil.copy(src, folder / name)
    before = digest(fastmri_train_h5)
    out = run_cli(fastmri_train_h5, folder)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    # The fastMRI training file is fully sampled but for 2 + 2 zero-padded columns of 24: 24/20 = 1.2x,
    # and its zero-filled RSS is exactly the stored reconstruction_rss.
    assert lines[0] == f"{fastmri_train_h5}  slices=3 coils=4 HxW=32x24 accel=1.20x ssim_zf=1.000"
    # The fastMRI test file stores a 9-of-22-column mask and has no target.
    assert lines[1] == f"{folder / 'a.h5'}  slices=2 coils=4 HxW=32x22 accel=2.44x ssim_zf=n/a"
    assert lines[2] == format_line(inspect_file(folder / "b.h5"))
    assert len(lines) == 3
    assert digest(fastmri_train_h5) == before


def test_headers_are_checked_before_any_output(medmtl_h5, tmp_path):
    missing = tmp_path / "late.h5"
    out = run_cli(medmtl_h5, missing)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.strip() == f"medmtl: error: {missing}: no such file or folder"


def test_empty_folder(tmp_path):
    out = run_cli(tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == f"medmtl: error: {tmp_path}: folder holds no *.h5 files"


def test_inspect_numbers_match_an_independent_computation(medmtl_h5):
    """Acceleration and SSIM recomputed with numpy FFTs and skimage, slice by slice."""
    info = inspect_file(medmtl_h5)
    with KSpaceFile(medmtl_h5) as f:
        mask = f.mask()
        scores = []
        for i in range(f.num_slices):
            s = f.read_slice(i)
            zero_filled = np.sqrt((np.abs(ifft2c_np(s["kspace"] * mask)) ** 2).sum(axis=0))
            target = s["target"]
            scores.append(structural_similarity(target, zero_filled, data_range=float(target.max())))
    assert info["acceleration"] == pytest.approx(18 / 9)
    assert info["ssim_zf"] == pytest.approx(np.mean(scores), abs=1e-5)
    assert 0.3 < info["ssim_zf"] < 0.99  # undersampling at 2x loses detail
    assert (info["slices"], info["coils"], info["height"], info["width"]) == (4, 3, 20, 18)


@pytest.mark.parametrize(
    ("target_shape", "image_shape"), [((16, 16), (32, 24)), ((9, 12), (9, 12)), ((10, 7), (8, 9))]
)
def test_slice_ssim_crops_to_the_common_size(target_shape, image_shape):
    rng = np.random.default_rng(0)
    image = rng.random(image_shape).astype(np.float32)
    shape = tuple(min(a, b) for a, b in zip(target_shape, image_shape))
    top, left = ((i - s) // 2 for i, s in zip(image_shape, shape))
    crop = image[top : top + shape[0], left : left + shape[1]]
    target = np.zeros(target_shape, np.float32)
    t_top, t_left = ((t - s) // 2 for t, s in zip(target_shape, shape))
    target[t_top : t_top + shape[0], t_left : t_left + shape[1]] = crop
    assert slice_ssim(target, image) == pytest.approx(1.0)
    assert slice_ssim(np.zeros(target_shape, np.float32), image) is None
