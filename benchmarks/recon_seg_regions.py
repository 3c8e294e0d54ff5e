"""Where a recon+seg model's segmentation errors lie: Dice inside the central third of the slice (on axial MNI
slices: the basal ganglia, thalami and internal capsules) and outside it.

Reads the k-space files that `medmtl data mni` wrote (their labels) and the predictions that `medmtl recon-seg`
wrote for them (same file names). Dice here is pooled over all slices, not averaged per slice.

    medmtl data mni --out runs/regions/in --split val --acceleration 8 --center-fraction 0.04
    medmtl recon-seg --checkpoint models/recon_seg_mni/model.ckpt --input runs/regions/in/val --output runs/regions/out
    .venv/bin/python benchmarks/recon_seg_regions.py --input runs/regions/in/val --predictions runs/regions/out
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np
from recon_seg_eval import read

CLASSES = {1: "GM", 2: "WM"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="folder of k-space files with labels")
    parser.add_argument("--predictions", type=Path, required=True, help="`medmtl recon-seg` output folder")
    args = parser.parse_args(argv)
    labels, segs = [], []
    for path in sorted(args.input.glob("*.h5")):
        predictions = args.predictions / path.name
        if not predictions.is_file():
            parser.error(
                f"--predictions {args.predictions}: no {path.name} (run `medmtl recon-seg` on --input)"
            )
        labels.append(read(path)["labels"])
        with h5py.File(predictions, "r") as f:
            segs.append(f["segmentation"][()])
    if not labels:
        parser.error(f"--input {args.input}: no *.h5 files")
    label, seg = np.concatenate(labels), np.concatenate(segs)
    _, h, w = label.shape
    y, x = np.mgrid[:h, :w]
    central = (abs(y - h / 2) < h / 6) & (abs(x - w / 2) < w / 6)
    brain = (label > 0).sum()
    print(
        "| region | share of labelled pixels | "
        + " | ".join(f"Dice {n}" for n in CLASSES.values())
        + " | "
        + " | ".join(f"share of {n} errors" for n in CLASSES.values())
        + " |"
    )
    print("|---" * (2 + 2 * len(CLASSES)) + "|")
    for name, region in (
        ("central third", central),
        ("outside", ~central),
        ("whole slice", np.ones_like(central)),
    ):
        r = np.broadcast_to(region, label.shape)
        dice, errors = [], []
        for k in CLASSES:
            predicted, true = seg == k, label == k
            dice.append(2 * (r & predicted & true).sum() / ((r & predicted).sum() + (r & true).sum()))
            errors.append((r & (predicted != true)).sum() / (predicted != true).sum())
        print(
            f"| {name} | {(r & (label > 0)).sum() / brain:.2f} | "
            + " | ".join(f"{d:.3f}" for d in dice)
            + " | "
            + " | ".join(f"{e:.2f}" for e in errors)
            + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
