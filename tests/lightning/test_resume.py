"""Exact resume and determinism of real `medmtl fit` subprocesses, and unreadable checkpoints.

Run A trains 8 steps uninterrupted (4 epochs of 2 steps, Dynamic Weight Average, a step scheduler, a
checkpoint after every step). Run C is the same config: it is SIGKILLed once step 3 is checkpointed, in the
middle of epoch 1, and resumed with ``--ckpt_path last``. DWA reweights from epoch 2 on with the mean losses of
epoch 1, half of which C computed before the kill, so the weights only match if the resume restored the
running means as well as the model, optimiser, scheduler, generators and data position. A and the first
part of C run at the same time (the machine has two cores; each run uses one).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from fit_probe import fit_command, fit_env, load_probes, run_fit, tiny_config

from medmtl.cli import main

STEPS, KILL_AFTER, STEPS_PER_EPOCH = 8, 3, 2
MODEL = {
    "balancer": {
        "class_path": "medmtl.balancing.DynamicWeightAverage",
        "init_args": {"tasks": ["recon", "seg"]},
    },
    "scheduler": {
        "class_path": "torch.optim.lr_scheduler.StepLR",
        "init_args": {"step_size": 5, "gamma": 0.5},
    },
}


def config(root: Path, callbacks: list[dict] | None = None) -> Path:
    return tiny_config(
        root,
        model=MODEL,
        data={"batch_size": 2, "samples_per_epoch": 2 * STEPS_PER_EPOCH},
        trainer={"max_steps": STEPS, "limit_val_batches": 1},
        callbacks=callbacks,
    )


def checkpoint(root: Path, step: int) -> dict:
    epoch = (step - 1) // STEPS_PER_EPOCH
    return torch.load(root / "run" / "checkpoints" / f"epoch={epoch}-step={step}.ckpt", weights_only=True)


def last(root: Path) -> dict:
    return torch.load(root / "run" / "checkpoints" / "last.ckpt", weights_only=True)


def assert_equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def start_stalling(root: Path, step: int) -> subprocess.Popen:
    """Start `medmtl fit` on ``root``'s config, made to stall once ``step`` steps are checkpointed."""
    stall = {
        "class_path": "fit_probe.StallAfter",
        "init_args": {"step": step, "marker": str(root / "stalled")},
    }
    path = config(root, callbacks=[stall])
    return subprocess.Popen(
        fit_command(path),
        cwd=root,
        env=fit_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when_stalled(proc: subprocess.Popen, root: Path) -> None:
    try:
        deadline = time.monotonic() + 300
        while not (root / "stalled").exists():
            assert proc.poll() is None, proc.stderr.read()[-4000:]
            assert time.monotonic() < deadline, "the run never reached the step"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(A, C): the uninterrupted run and the killed and resumed one."""
    a, c = tmp_path_factory.mktemp("uninterrupted"), tmp_path_factory.mktemp("killed")
    killed = start_stalling(c, KILL_AFTER)
    try:
        run_fit(config(a))
    finally:
        kill_when_stalled(killed, c)
    assert last(c)["global_step"] == KILL_AFTER
    run_fit(config(c), "--ckpt_path", "last")  # the same config, without the stall
    return a, c


def test_two_runs_with_one_seed_give_identical_weights(runs):
    a, c = runs
    for step in range(1, KILL_AFTER + 1):  # C wrote these before it was killed
        assert_equal_states(checkpoint(a, step)["state_dict"], checkpoint(c, step)["state_dict"])


def test_a_sigkilled_run_resumes_to_the_same_weights(runs):
    a, c = runs
    final_a, final_c = last(a), last(c)
    assert final_a["global_step"] == final_c["global_step"] == STEPS
    assert_equal_states(final_a["state_dict"], final_c["state_dict"])
    assert final_a["state_dict"]["balancer.epochs_seen"] == 3  # DWA reweighted in epochs 2 and 3
    assert not torch.equal(final_a["state_dict"]["balancer.weights"], torch.ones(2))
    for state_a, state_c in zip(
        final_a["optimizer_states"][0]["state"].values(), final_c["optimizer_states"][0]["state"].values()
    ):
        assert_equal_states(state_a, state_c)
    assert final_a["lr_schedulers"] == final_c["lr_schedulers"]
    # After the resume C trained on exactly the samples A saw in those steps, with the same losses.
    probe_a, probe_c = load_probes(a)[0], load_probes(c)[0]
    resumed = (STEPS - KILL_AFTER) * 2
    assert probe_c["train"] == probe_a["train"][-resumed:]
    assert probe_c["losses"] == probe_a["losses"][-(STEPS - KILL_AFTER) :]


def test_a_checkpoint_holds_what_a_resume_needs(runs):
    saved = checkpoint(runs[0], KILL_AFTER)
    assert saved["MultitaskDataModule"] == {"epoch": 1, "consumed": 2}  # 1 of epoch 1's batches of 2
    (rank,) = saved["medmtl_resume"]["ranks"]
    assert set(rank["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert set(rank["means"]) == {"recon", "seg"} and float(rank["means"]["seg"]["weight"]) == 1
    assert "weights" in rank["balancer"]
    assert saved["optimizer_states"] and saved["lr_schedulers"] and saved["loops"]["fit_loop"]
    end_of_epoch = checkpoint(runs[0], STEPS_PER_EPOCH)
    assert end_of_epoch["MultitaskDataModule"] == {"epoch": 1, "consumed": 0}


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"\x00not a checkpoint" * 64)


@pytest.mark.parametrize(("damage", "given"), [(truncated, "path"), (garbage, "last")])
def test_an_unreadable_checkpoint_is_one_line_and_exit_2(runs, tmp_path, capsys, damage, given):
    """Whether named (read first by LightningCLI) or found as ``last`` (read by the trainer)."""
    folder = tmp_path / "run" / "checkpoints"
    shutil.copytree(runs[0] / "run" / "checkpoints", folder)
    bad = folder / "last.ckpt"
    damage(bad)
    previous = folder / f"epoch=3-step={STEPS}.ckpt"
    previous.touch()  # the newest of the others
    args = [f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.deterministic=false"]
    ckpt_path = str(bad) if given == "path" else "last"
    code = main(["fit", "-c", str(runs[0] / "config.yaml"), "--ckpt_path", ckpt_path, *args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert lines[-1].startswith(f"medmtl: error: {bad}: cannot be read as a checkpoint"), lines[-1]
    assert lines[-1].endswith(f"resume from the previous checkpoint, {previous}")
    assert not any("Traceback" in line for line in lines)
