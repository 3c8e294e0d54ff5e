"""Joint versus sequential versus single-task training at an equal budget, with MONAI's VarNet as reference.

Each row trains with ``medmtl fit -c configs/recon_seg_mni.yaml -c configs/recon_seg_compare.yaml`` (same
steps, same seed so the same training draws, same optimiser) and only the network differs:

- ``joint``, ``sequential``, ``recon``, ``seg_zero_filled``, ``seg_target``: ``ReconSegNet`` in that mode with
  ``--cascades`` cascades and its default widths;
- ``joint_cg``, ``recon_cg``: the same in ``joint`` or ``recon`` mode with MoDL's proximal data consistency
  (``dc: cg``, 5 conjugate-gradient steps per cascade) instead of the default gradient step;
- ``monai_varnet``: ``medmtl.models.monai_varnet.MonaiVarNet`` (MONAI's ``VariationalNetworkModel`` with its
  default widths) with the same cascades, trained by the same ``MultitaskModule`` and reconstruction loss.

Then every final checkpoint goes through ``benchmarks/recon_seg_eval.py`` (whole axial validation slices, 4x
and 8x, skimage SSIM) and the table is printed with each row's training wall time.

    .venv/bin/python benchmarks/recon_seg_compare.py --out runs/compare            # about 35 min, 2 cores
    .venv/bin/python benchmarks/recon_seg_compare.py --out /tmp/c --steps 2 --rows joint monai_varnet  # smoke
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from recon_seg_eval import evaluate, table

from medmtl.io.atomic import atomic_path

ROWS = (
    "joint",
    "sequential",
    "recon",
    "seg_zero_filled",
    "seg_target",
    "monai_varnet",
    "joint_cg",
    "recon_cg",
)
REPO = Path(__file__).resolve().parent.parent


def row_config(row: str, cascades: int, out: Path, steps: int) -> str:
    """The YAML layered last for one row: its network, its output folder and the step budget."""
    if row == "monai_varnet":
        model = (
            f"class_path: medmtl.models.monai_varnet.MonaiVarNet\n    init_args: {{num_cascades: {cascades}}}"
        )
    else:
        mode, cg = row.removesuffix("_cg"), row.endswith("_cg")
        model = (
            "class_path: medmtl.models.recon_seg.ReconSegNet\n"
            f"    init_args: {{mode: {mode}, num_cascades: {cascades}, num_classes: 3"
            + (", dc: cg}" if cg else "}")
        )
    return (
        f"trainer:\n  max_steps: {steps}\n  val_check_interval: {steps}\n  default_root_dir: {out}\n"
        f"  logger:\n    class_path: medmtl.lightning.CSVLogger\n"
        f"    init_args: {{save_dir: {out.parent}, name: {out.name}, version: ''}}\n"
        f"model:\n  model:\n    {model}\n"
        f"  scheduler:\n    class_path: torch.optim.lr_scheduler.CosineAnnealingLR\n"
        f"    init_args: {{T_max: {steps}}}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="one run folder per row goes here")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--cascades", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoints, seconds = {}, {}
    for row in args.rows:
        run = args.out / row
        override = args.out / f"{row}.yaml"
        override.write_text(row_config(row, args.cascades, run, args.steps))
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "medmtl.cli", "fit", "-c", "configs/recon_seg_mni.yaml"]
        cmd += ["-c", "configs/recon_seg_compare.yaml", "-c", str(override)]
        print(f"== {row}: {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)
        seconds[row] = time.perf_counter() - start
        checkpoints[row] = run / "checkpoints" / "last.ckpt"
    rows = evaluate(checkpoints, [4.0, 8.0], args.threads)
    for r in rows:
        if r["method"] in seconds:
            r["train_s_per_step"] = seconds[r["method"]] / args.steps
    print(
        f"\nEqual budget: {args.steps} steps, {args.cascades} cascades, batch 2, 128 x 128 training windows\n"
    )
    print(table(rows))
    print("\n| row | training s/step |\n|---|---|")
    for row, s in seconds.items():
        print(f"| {row} | {s / args.steps:.2f} |")
    with atomic_path(args.out / "compare.json") as tmp:
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
