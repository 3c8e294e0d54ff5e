"""MULAN's ablation at equal budget: detection only; + tags; + masks; + score refinement.

Every row trains ``configs/lesion_mni.yaml`` with one more config layered last, which changes only the
network's ``tasks``, the budget (``--steps`` steps, the one-cycle schedule stretched to it, a validation every
quarter) and the output folder ``<out>/<row>``: the same seed, data, batch, crops and optimiser. Each final
checkpoint (``last.ckpt``, tag thresholds chosen on the last validation) is then scored on the held-out test
volumes by ``medmtl test``, as the shipped model is. The full row is scored a second time with
``lesion_refined: false`` (``medmtl.lightning.MultitaskModule``): the same weights, read from the raw
detection and tag heads instead of the refinement's outputs, which isolates what the refinement layer changes.

    .venv/bin/python benchmarks/lesion_ablation.py --out runs/lesion_ablation --steps 2000

Prints a table (sensitivity at 1 FP per image at IoU 0.5 and 0.1, mAP, mean tag AUC, mask Dice, long-axis
error, median seconds per training step) and writes ``<out>/lesion_ablation.json``. A finished row is not
trained again (delete its folder to redo it); ``--table-only`` prints the saved table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from fit_layers import trainer_layer

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/lesion_mni.yaml"
ROWS = {
    "det": ["det"],
    "det+tag": ["det", "tag"],
    "det+tag+mask": ["det", "tag", "mask"],
    "det+tag+mask+refine": ["det", "tag", "mask", "refine"],
}
COLUMNS = [
    ("sens@1FP IoU0.5", "test/sens@1fp_iou0.5", "{:.3f}"),
    ("sens@1FP IoU0.1", "test/sens@1fp_iou0.1", "{:.3f}"),
    ("FROC mean IoU0.5", "test/froc_iou0.5", "{:.3f}"),
    ("mAP", "test/mAP", "{:.3f}"),
    ("tag AUC", "test/tag_auc_mean", "{:.3f}"),
    ("mask Dice", "test/dice_mean", "{:.3f}"),
    ("long axis mm", "test/long_axis_mae_mm", "{:.2f}"),
]


def layer(tasks: list[str], run: Path, steps: int, seed: int = 0) -> dict:
    """The config layered last for one row (JSON is YAML)."""
    return {
        "seed_everything": seed,
        "trainer": trainer_layer(
            run,
            steps,
            max(1, steps // 4),
            ({"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},),
        ),
        "model": {
            "model": {"init_args": {"tasks": tasks}},
            "scheduler": {
                "class_path": "torch.optim.lr_scheduler.OneCycleLR",
                "init_args": {"max_lr": 0.002, "total_steps": steps, "pct_start": 0.05},
            },
        },
    }


def medmtl(*args: str) -> None:
    cmd = [sys.executable, "-m", "medmtl.cli", *args]
    print("==", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def test_metrics(run: Path) -> dict[str, float]:
    return json.loads((run / "metrics.json").read_text())["test"]["metrics"]


def trained(run: Path, steps: int) -> bool:
    """Whether the row's fit finished (its step timing is then kept: a resumed finished fit would redo it)."""
    try:
        return json.loads((run / "metrics.json").read_text())["fit"]["global_step"] >= steps
    except (OSError, ValueError, KeyError):
        return False


def run_row(name: str, tasks: list[str], out: Path, steps: int, seed: int) -> dict:
    run = out / name
    config = out / f"{name}.yaml"
    done = run / "row.json"
    if done.is_file():
        row = json.loads(done.read_text())
        made = {k: row.get(k) for k in ("tasks", "steps", "seed")}
        if made != {"tasks": tasks, "steps": steps, "seed": seed}:
            raise SystemExit(f"lesion_ablation.py: {run} holds a row made with {made}; choose another --out")
        return row
    config.write_text(json.dumps(layer(tasks, run, steps, seed), indent=1) + "\n")
    ckpt = run / "checkpoints" / "last.ckpt"
    if not trained(run, steps):  # a killed row resumes from its last checkpoint
        resume = ["--ckpt_path", "last"] if ckpt.is_file() else []
        medmtl("fit", "-c", CONFIG, "-c", str(config), *resume)
    timing = json.loads((run / "step_times.json").read_text())
    medmtl("test", "-c", CONFIG, "-c", str(config), "--ckpt_path", str(ckpt))
    row = {
        "tasks": tasks,
        "steps": steps,
        "seed": seed,
        "metrics": test_metrics(run),
        "median_step_s": timing["median_s"],
    }
    if "refine" in tasks:
        # `medmtl test --ckpt_path` takes the model's arguments from the checkpoint's hyper-parameters, over
        # the command line (LightningCLI), so the unrefined scoring reads a copy whose hyper-parameters say so.
        unrefined = run / "checkpoints" / "unrefined.ckpt"
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        state["hyper_parameters"]["lesion_refined"] = False
        torch.save(state, unrefined)
        medmtl("test", "-c", CONFIG, "-c", str(config), "--ckpt_path", str(unrefined))
        row["unrefined_metrics"] = test_metrics(run)
    done.write_text(json.dumps(row, indent=1) + "\n")
    return row


def table(result: dict) -> str:
    head = ["row", *[c[0] for c in COLUMNS], "s/step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def line(name: str, metrics: dict, step: str) -> str:
        cells = [fmt.format(metrics[k]) if metrics.get(k) is not None else "-" for _, k, fmt in COLUMNS]
        return "| " + " | ".join([name, *cells, step]) + " |"

    for name, row in result["rows"].items():
        step = row.get("median_step_s")
        lines.append(line(name, row["metrics"], "-" if step is None else f"{step:.3f}"))
        if "unrefined_metrics" in row:
            lines.append(line(f"{name}, scored without refinement", row["unrefined_metrics"], "same weights"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/lesion_ablation"))
    parser.add_argument("--steps", type=int, default=2000, help="training steps per row (default 2000)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seed", type=int, default=0, help="seed_everything of every row (default 0)")
    parser.add_argument("--table-only", action="store_true", help="print the saved table")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    saved = out / "lesion_ablation.json"
    if args.table_only:
        if not saved.is_file():
            print(f"lesion_ablation.py: {saved}: no saved result", file=sys.stderr)
            return 2
        print(table(json.loads(saved.read_text())))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    result = {"steps": args.steps, "seed": args.seed, "config": CONFIG, "rows": {}}
    for name in args.rows:
        result["rows"][name] = run_row(name, ROWS[name], out, args.steps, args.seed)
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(saved)
    print()
    print(f"{args.steps} steps per row, seed {args.seed}, {CONFIG}; test on the held-out sagittal volumes")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
