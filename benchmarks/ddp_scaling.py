"""Training throughput of `medmtl fit` on the default online data: 1 process against 2 DDP processes on CPU.

Three layouts run the same recipe, each as a real `medmtl fit` child process (``configs/recon_seg_mni.yaml``
with the overrides below), in the same invocation and interleaved over ``--rounds``:

- ``1 x 1``: one process, one thread (``OMP_NUM_THREADS=1``), ``strategy: auto``;
- ``1 x 2``: one process, two threads;
- ``2 x 1``: two processes, one thread each, ``strategy: ddp`` over gloo (``devices: 2``).

Every process trains on ``--batch-size`` samples per step (the DDP run's global batch is twice that: weak
scaling, the way DDP is used) from the online MNI152 simulator at ``--size`` with ``--coils`` coils, a small
``ReconSegNet`` (``NETWORK``), ``data.num_workers: 0`` (the simulation runs in the training process, so it is
part of the measured step), no validation, logging or checkpoints. A callback stamps ``time.perf_counter()``
after every training step on rank 0; throughput is the samples of the steps after ``--warmup``, divided by the
time they took, the best over the rounds. Startup (imports, process group, data module) is not counted.

Speed-up is against ``1 x 1``; efficiency is the speed-up divided by the cores the layout uses
(processes x threads), so 100 % is perfect scaling. On a machine that other jobs load, run it with the
machine otherwise idle: one busy core stalls every DDP step at its all-reduce.

    .venv/bin/python benchmarks/ddp_scaling.py                      # the measurement (a few minutes)
    .venv/bin/python benchmarks/ddp_scaling.py --size 64 64 --steps 3 --warmup 1 --rounds 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recon_seg_mni.yaml"
# name -> (processes, threads per process)
LAYOUTS = {"1 x 1": (1, 1), "1 x 2": (1, 2), "2 x 1": (2, 1)}
# A small joint network: the benchmark is about how a step scales, not about the step itself.
NETWORK = {
    "num_cascades": 2,
    "chans": 4,
    "pools": 2,
    "sens_chans": 4,
    "sens_pools": 1,
    "seg_chans": 8,
    "seg_pools": 2,
}


class StepTimer(Callback):
    """Stamps ``time.perf_counter()`` after every training step; rank 0 writes the stamps to ``path`` (JSON:
    {"times": [...], "world_size": int}) when fit ends. Built by the child `medmtl fit` from its config."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter())

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            self.path.write_text(json.dumps({"times": self.times, "world_size": trainer.world_size}))


def overrides(args: argparse.Namespace, processes: int, root: Path, stamps: Path) -> dict:
    """The YAML layered on the recipe for one layout."""
    return {
        "trainer": {
            "accelerator": "cpu",
            "devices": processes,
            "num_nodes": 1,
            "strategy": "ddp" if processes > 1 else "auto",
            "max_steps": args.steps,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root),
            # Replaces the recipe's callbacks (checkpoints, metrics.json, prediction writer).
            "callbacks": [{"class_path": "ddp_scaling.StepTimer", "init_args": {"path": str(stamps)}}],
        },
        "model": {"model": {"init_args": NETWORK}, "panel_every_n_val_steps": 0},
        "data": {
            "batch_size": args.batch_size,
            "num_workers": 0,
            "persistent_workers": False,
            # Exactly one epoch, so no epoch boundary (new loaders) falls inside the timed steps.
            "samples_per_epoch": args.steps * args.batch_size * processes,
            "simulation": {"num_coils": args.coils, "size": list(args.size)},
        },
    }


def medmtl_command() -> list[str]:
    script = Path(sys.executable).parent / "medmtl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "medmtl.cli"]


def run_layout(args: argparse.Namespace, name: str, work: Path) -> float:
    """Run one `medmtl fit` child for ``name``; returns its samples per second after the warm-up."""
    processes, threads = LAYOUTS[name]
    root = work / name.replace(" ", "")
    root.mkdir(parents=True, exist_ok=True)
    stamps = root / "steps.json"
    stamps.unlink(missing_ok=True)
    config = root / "bench.yaml"
    config.write_text(yaml.safe_dump(overrides(args, processes, root, stamps)))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        # The child imports StepTimer as ``ddp_scaling.StepTimer``.
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])
        ),
    }
    command = [*medmtl_command(), "fit", "-c", str(RECIPE), "-c", str(config)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    if result.returncode != 0 or not stamps.exists():
        sys.exit(f"ddp_scaling: {name} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    record = json.loads(stamps.read_text())
    times, world = record["times"], record["world_size"]
    if world != processes or len(times) != args.steps:
        sys.exit(
            f"ddp_scaling: {name} ran {len(times)} steps on {world} processes; expected {args.steps} on {processes}"
        )
    timed = times[args.warmup - 1 :]
    return (len(timed) - 1) * args.batch_size * world / (timed[-1] - timed[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    parser.add_argument("--coils", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2, help="samples per process and step")
    parser.add_argument("--steps", type=int, default=30, help="training steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=5, help="first steps not timed")
    parser.add_argument("--rounds", type=int, default=2, help="runs per layout, interleaved; the best counts")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
    args = parser.parse_args()
    if not 1 <= args.warmup < args.steps:
        parser.error("need 1 <= --warmup < --steps")

    best = {name: 0.0 for name in LAYOUTS}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ddp_scaling_") as work:
        for _ in range(args.rounds):
            for name in LAYOUTS:
                best[name] = max(best[name], run_layout(args, name, Path(work)))

    base = best["1 x 1"]
    print(
        f"`medmtl fit`, online MNI152 data {args.size[0]}x{args.size[1]}, {args.coils} coils, ReconSegNet {NETWORK}, "
        f"batch {args.batch_size} per process, {args.steps - args.warmup} timed steps after {args.warmup}, "
        f"best of {args.rounds}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load:.1f} at the start\n"
    )
    print("| processes x threads | global batch | samples/s | speed-up | efficiency |")
    print("|---|---|---|---|---|")
    for name, (processes, threads) in LAYOUTS.items():
        speedup = best[name] / base
        print(
            f"| {name} | {args.batch_size * processes} | {best[name]:.2f} | {speedup:.2f}x "
            f"| {100 * speedup / (processes * threads):.0f} % |"
        )


if __name__ == "__main__":
    main()
