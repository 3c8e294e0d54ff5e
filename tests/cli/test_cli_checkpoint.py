"""`medmtl checkpoint slim`: a smaller copy that predicts exactly as the original, and one-line errors."""

from __future__ import annotations

import numpy as np
import torch
from conftest import TINY_NET
from test_cli_recon_seg import save_checkpoint

from medmtl.cli import main
from medmtl.inference import Predictor
from medmtl.models.data_consistency import proximal_steps


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


def proximal_iterations(path) -> set[int]:
    return proximal_steps(Predictor.from_checkpoint(path).model)


def test_cg_iterations_sets_the_proximal_steps_of_the_copy(tmp_path, make_kspace):
    trained = save_checkpoint(tmp_path / "cg.ckpt", {**TINY_NET, "dc": "cg", "cg_iterations": 2})
    copy, again = tmp_path / "cg5.ckpt", tmp_path / "cg7.ckpt"
    slim = ["checkpoint", "slim", "--checkpoint"]
    assert main([*slim, str(trained), "--output", str(copy), "--cg-iterations", "5"]) == 0
    assert main([*slim, str(copy), "--output", str(again), "--cg-iterations", "7"]) == 0
    assert proximal_iterations(trained) == {2}
    assert proximal_iterations(copy) == {5}
    assert proximal_iterations(again) == {7}
    record = torch.load(again, weights_only=True)["medmtl"]
    assert record["cg_iterations_trained"] == 2 and record["source"] == "cg5.ckpt"
    # The same weights: with the trained number of steps, the copy predicts as the original.
    back = tmp_path / "cg2.ckpt"
    assert main([*slim, str(again), "--output", str(back), "--cg-iterations", "2"]) == 0
    kspace, _ = make_kspace(5, 1, 2, 40, 44)
    mask = np.zeros(44, np.float32)
    mask[::3] = 1
    mask[20:24] = 1
    a, b, c = (Predictor.from_checkpoint(p).predict_volume(kspace, mask) for p in (trained, back, again))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_cg_iterations_of_a_network_without_proximal_steps_is_one_line_and_exit_2(tmp_path, capsys):
    gradient = save_checkpoint(tmp_path / "gradient.ckpt", TINY_NET)
    cg = save_checkpoint(tmp_path / "cg.ckpt", {**TINY_NET, "dc": "cg"})
    out = tmp_path / "o.ckpt"
    for path, n, what in ((gradient, "4", "has no proximal"), (cg, "0", "must be at least 1")):
        args = ["checkpoint", "slim", "--checkpoint", str(path), "--output", str(out), "--cg-iterations", n]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and what in err
        assert not out.exists()


def test_segment_refined_makes_the_copy_segment_the_refined_magnitude(tmp_path, make_kspace, capsys):
    trained = save_checkpoint(
        tmp_path / "r.ckpt", {**TINY_NET, "refine_chans": 2, "refine_pools": 1}, perturb=0.1
    )
    copy = tmp_path / "refined.ckpt"
    assert (
        main(["checkpoint", "slim", "--checkpoint", str(trained), "--output", str(copy), "--segment-refined"])
        == 0
    )
    assert torch.load(copy, weights_only=True)["medmtl"]["segment_refined_trained"] is False
    kspace, _ = make_kspace(5, 2, 2, 40, 44)
    mask = np.zeros(44, np.float32)
    mask[::3] = 1
    mask[20:24] = 1
    original, flipped = Predictor.from_checkpoint(trained), Predictor.from_checkpoint(copy)
    assert flipped.model.segment_refined and not original.model.segment_refined
    recon, seg = original.predict_volume(kspace, mask)
    original.model.segment_refined = True
    expected = original.predict_volume(kspace, mask)
    got = flipped.predict_volume(kspace, mask)
    np.testing.assert_array_equal(got[0], recon)  # the reconstruction is unchanged
    np.testing.assert_array_equal(got[1], expected[1])
    assert not np.array_equal(got[1], seg)
    # --no-segment-refined gives back the original's predictions; the record keeps what it was trained with.
    back = tmp_path / "back.ckpt"
    assert (
        main(["checkpoint", "slim", "--checkpoint", str(copy), "--output", str(back), "--no-segment-refined"])
        == 0
    )
    assert torch.load(back, weights_only=True)["medmtl"]["segment_refined_trained"] is False
    np.testing.assert_array_equal(Predictor.from_checkpoint(back).predict_volume(kspace, mask)[1], seg)
    # A network without a refiner has no refined magnitude: one line, exit 2, nothing written.
    plain = save_checkpoint(tmp_path / "plain.ckpt", TINY_NET)
    out = tmp_path / "o.ckpt"
    assert (
        main(["checkpoint", "slim", "--checkpoint", str(plain), "--output", str(out), "--segment-refined"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--segment-refined" in err and not out.exists()
