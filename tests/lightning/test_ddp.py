"""A real 2-process DDP fit on CPU (gloo) through `medmtl fit`, on the default simulated data and on files.

Each process records what it saw and ends with its weights (``fit_probe.RankProbe``); the checks are the
acceptance of issue 8: identical weights on every rank, a falling loss, reduced validation metrics equal to a
single process's over the union of the shards, and no sample twice in an epoch. The default-data run balances
with PCGrad, which runs the backward itself, outside ``manual_backward``: the path where a process would
silently keep its own gradients if DDP's all-reduce were not readied. The run on files uses GradNorm, whose
backward goes through ``manual_backward``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from fit_probe import load_probes, run_fit, tiny_config

from medmtl.cli import main
from medmtl.io.kspace import write_kspace_h5

DDP = {"devices": 2, "strategy": "ddp", "max_steps": 12}  # 8 samples per epoch, 4 steps per process: 3 epochs
PCGRAD = {"class_path": "medmtl.balancing.PCGrad", "init_args": {"tasks": ["recon", "seg"]}}
VAL_SLICES = set(range(80, 85))  # 5: shares of 3 and 2


def same(a, b) -> bool:
    """Bitwise equality of tensors, also inside the dicts of extra state (PCGrad's generator)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def assert_same_weights(probes: list[dict], prefix: str = "") -> None:
    """The entries of every process's state dict whose names start with ``prefix`` are identical."""
    first, *others = (p["state_dict"] for p in probes)
    names = [name for name in first if name.startswith(prefix)]
    assert names
    for other in others:
        assert first.keys() == other.keys()
        for name in names:
            assert same(first[name], other[name]), name


def assert_epochs_shard_without_repeats(probes: list[dict], epoch_size: int) -> None:
    """Per epoch: no repeat within a process or across processes, equal shares covering ``epoch_size`` samples."""
    epochs = sorted({e for p in probes for e, *_ in p["train"]})
    for epoch in epochs:
        shares = [[(f, s) for e, f, s in p["train"] if e == epoch] for p in probes]
        seen = Counter(key for share in shares for key in share)
        assert max(seen.values()) == 1, (epoch, seen)
        assert {len(share) for share in shares} == {epoch_size // len(probes)}, epoch


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    run_fit(tiny_config(root, trainer=DDP, model={"balancer": PCGRAD}))
    return root


def test_ddp_ranks_end_with_identical_weights_and_the_loss_fell(ddp_fit):
    probes = load_probes(ddp_fit)
    assert [p["world_size"] for p in probes] == [2, 2]
    assert_same_weights(probes)
    # The loss of the global batch (both processes' samples) over the first and the last 4 steps, and the
    # validation loss on the same fixed draws after each epoch.
    losses = np.mean([p["losses"] for p in probes], axis=0)
    assert len(losses) == 12 and losses[-4:].mean() < losses[:4].mean(), losses
    val = [m["val/loss"] for m in probes[0]["val_metrics"]]
    assert len(val) == 3 and val[0] > val[1] > val[2], val


def test_ddp_epochs_are_sharded_without_repeats_and_reshuffled(ddp_fit):
    probes = load_probes(ddp_fit)
    assert_epochs_shard_without_repeats(probes, epoch_size=8)
    # The sampler's epoch moves under DDP too: each process gets other samples in another order every epoch.
    orders = [[s for e, _, s in probes[0]["train"] if e == epoch] for epoch in range(3)]
    assert len({tuple(o) for o in orders}) == 3
    for p in probes:  # validation: every slice once over both processes, at every validation
        for epoch in range(3):
            assert len({s for e, _, s in p["val"] if e == epoch}) in (2, 3)
    for epoch in range(3):
        val = [s for p in probes for e, _, s in p["val"] if e == epoch]
        assert sorted(val) == sorted(VAL_SLICES)


def test_ddp_reduced_val_metrics_equal_one_process_on_the_union(ddp_fit):
    probes = load_probes(ddp_fit)
    reduced = probes[0]["val_metrics"][-1]
    assert probes[1]["val_metrics"][-1] == reduced  # every process holds the reduced values
    config, checkpoint = ddp_fit / "config.yaml", ddp_fit / "run" / "checkpoints" / "last.ckpt"
    # One process on the same validation slices with the final weights. Deterministic mode is left off here:
    # Lightning would switch it on for the whole test session.
    args = ["--ckpt_path", str(checkpoint), "--trainer.devices=1", "--trainer.strategy=auto"]
    assert main(["validate", "-c", str(config), *args, "--trainer.deterministic=false"]) == 0
    single = json.loads((ddp_fit / "run" / "metrics.json").read_text())["validate"]["metrics"]
    names = ["val/ssim", "val/psnr", "val/nmse", "val/dice_mean", "val/hd95_white_matter", "val/loss"]
    for name in names:
        assert reduced[name] == pytest.approx(single[name], rel=1e-6), name


def write_folder(folder: Path, make_kspace, files: int, seed: int) -> Path:
    """``files`` medmtl k-space files of 3 slices, 2 coils, 32 x 32, with target and 3-class segmentation."""
    for i in range(files):
        kspace, image = make_kspace(seed + i, 3, 2, 32, 32)
        segmentation = np.digitize(image, [0.3, 0.6]).astype(np.uint8)
        write_kspace_h5(folder / f"f{i}.h5", kspace, target=image, segmentation=segmentation)
    return folder


@pytest.mark.slow
def test_ddp_gradnorm_on_files(tmp_path, make_kspace):
    """GradNorm under DDP on folders of files (sharded, remasked). Each process steers its own task weights
    from its own losses and gradient norms, and DDP averages the weighted gradients, so the network stays
    identical on every process while the task weights may drift apart a little (docs/distributed.md)."""
    data = {
        # 9 slices: 4 + 4 per epoch, 1 left out
        "train_dir": str(write_folder(tmp_path / "train", make_kspace, 3, seed=10)),
        "val_dir": str(write_folder(tmp_path / "val", make_kspace, 1, seed=20)),
        "remask_files": True,
        "simulation": {"num_coils": 2, "accelerations": [4], "center_fractions": [0.16]},
    }
    gradnorm = {"class_path": "medmtl.balancing.GradNorm", "init_args": {"tasks": ["recon", "seg"]}}
    run_fit(tiny_config(tmp_path / "fit", trainer=DDP, data=data, model={"balancer": gradnorm}))
    probes = load_probes(tmp_path / "fit")
    assert_same_weights(probes, prefix="model.")
    assert_epochs_shard_without_repeats(probes, epoch_size=8)
    for p in probes:
        first, last = p["weights"][0], p["weights"][-1]
        assert first == {"train/weight_recon": 1.0, "train/weight_seg": 1.0}
        assert last["train/weight_recon"] != 1.0  # GradNorm moved them
        assert last["train/weight_recon"] + last["train/weight_seg"] == pytest.approx(2.0, rel=1e-5)


def test_fsdp_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys):
    """Lightning's FSDP strategy needs CUDA; on a CPU machine `medmtl fit` says so instead of a traceback."""
    config = tiny_config(tmp_path, trainer={"devices": 2, "strategy": "fsdp", "accelerator": "cpu"})
    assert main(["fit", "-c", str(config)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "requires a GPU accelerator" in lines[0], lines
