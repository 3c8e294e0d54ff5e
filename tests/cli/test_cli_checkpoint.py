"""`medmtl checkpoint slim`: a smaller copy that predicts exactly as the original, and one-line errors."""

from __future__ import annotations

import numpy as np
import torch
from conftest import TINY_NET
from test_cli_recon_seg import save_checkpoint

from medmtl.cli import main
from medmtl.inference import Predictor


def test_slim_copy_predicts_the_same_and_is_smaller(tmp_path, make_kspace, capsys):
    full = save_checkpoint(tmp_path / "full.ckpt", TINY_NET)
    checkpoint = torch.load(full, weights_only=True)
    checkpoint["optimizer_states"] = [{"state": {0: {"exp_avg": torch.zeros(100_000)}}}]
    checkpoint["global_step"] = 7
    torch.save(checkpoint, full)
    before = full.read_bytes()
    assert (
        main(["checkpoint", "slim", "--checkpoint", str(full), "--output", str(tmp_path / "slim.ckpt")]) == 0
    )
    assert "step 7" in capsys.readouterr().out
    assert full.read_bytes() == before
    slim = tmp_path / "slim.ckpt"
    assert slim.stat().st_size < full.stat().st_size / 2
    assert torch.load(slim, weights_only=True)["medmtl"]["global_step"] == 7
    kspace, _ = make_kspace(5, 2, 2, 40, 44)
    mask = np.ones(44, np.float32)
    a, b = (Predictor.from_checkpoint(p).predict_volume(kspace, mask) for p in (full, slim))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    args = [
        "checkpoint",
        "slim",
        "--checkpoint",
        str(tmp_path / "junk.ckpt"),
        "--output",
        str(tmp_path / "o.ckpt"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.ckpt" in err
    assert not (tmp_path / "o.ckpt").exists()
    same = [
        "checkpoint",
        "slim",
        "--checkpoint",
        str(tmp_path / "junk.ckpt"),
        "--output",
        str(tmp_path / "junk.ckpt"),
    ]
    assert main(same) == 2
    assert "is the input checkpoint" in capsys.readouterr().err
