"""A look at the simulated lesion data: key slices with their lesions' boxes, outlines and tags, and the time
one volume takes to simulate.

Draws ``--volumes`` volumes of each split (training: axial and coronal, validation: sagittal) and shows, for
each, the key slice of its largest lesion (or the middle slice of a lesion-free volume) as ``LesionSliceDataset``
serves it (the centre slice of the context), with every lesion on that slice: box, mask outline, the long and
short axis in mm and its tags. Writes ``lesion_sim_preview.png`` into ``--out`` and prints the median time per
volume over ``--timed`` more volumes (after one warm-up volume that loads and resamples the template).

    .venv/bin/python benchmarks/lesion_sim_preview.py --out runs/preview --voxel-mm 2 --slice-mm 2 2.5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from medmtl.data.lesion_dataset import slice_sample
from medmtl.data.lesion_sim import LesionSimOptions, simulate_lesion_volume
from medmtl.io.atomic import atomic_path
from medmtl.keys import Keys


def time_volumes(options: LesionSimOptions, count: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds per simulated training volume over ``count`` volumes after one warm-up
    volume. CPU time is this process's, so it stays meaningful on a machine shared with other work."""
    simulate_lesion_volume(10_000, options=options)
    wall, cpu = [], []
    for index in range(count):
        start, start_cpu = time.perf_counter(), time.process_time()
        simulate_lesion_volume(10_001 + index, options=options)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return float(np.median(wall)), float(np.median(cpu))


def draw(ax, volume) -> None:
    if volume.lesions:
        biggest = max(volume.lesions, key=lambda lesion: np.prod(lesion.box[3:] - lesion.box[:3]))
        k = biggest.key_slice
    else:
        k = volume.image.shape[2] // 2
    sample = slice_sample(volume, k)
    context = sample[Keys.CONTEXT].numpy()
    # (i, j) image axes shown as rows and columns, so boxes read (row0, col0, row1, col1)
    ax.imshow(context[len(context) // 2], cmap="gray", vmin=0, vmax=1.3, interpolation="nearest")
    for box, tags, mask, (long_mm, short_mm) in zip(
        sample[Keys.BOXES].numpy(),
        sample[Keys.TAGS].numpy(),
        sample[Keys.MASKS].numpy(),
        sample[Keys.DIAMETERS],
    ):
        i0, j0, i1, j1 = box
        ax.add_patch(
            plt.Rectangle((j0 - 0.5, i0 - 0.5), j1 - j0, i1 - i0, fill=False, color="yellow", lw=0.8)
        )
        ax.contour(mask, levels=[0.5], colors="cyan", linewidths=0.5)
        names = [volume.tag_names[t] for t in np.flatnonzero(tags > 0.5)]
        text = f"{float(long_mm):.0f}x{float(short_mm):.0f} mm\n" + "\n".join(names)
        ax.text(j1 + 1, i0, text, color="yellow", fontsize=4, va="top")
    ax.set_title(
        f"{volume.name}\n{volume.meta['orientation']} k={k}, {' x '.join(f'{s:g}' for s in volume.spacing)} mm",
        fontsize=5,
    )
    ax.axis("off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for lesion_sim_preview.png")
    parser.add_argument("--voxel-mm", type=float, default=2.0)
    parser.add_argument("--slice-mm", type=float, nargs="+", default=None)
    parser.add_argument("--volumes", type=int, default=4, help="volumes per split shown")
    parser.add_argument("--timed", type=int, default=10, help="volumes timed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    options = LesionSimOptions(voxel_mm=args.voxel_mm, slice_mm=args.slice_mm)
    wall, cpu = time_volumes(options, args.timed)
    print(
        f"{wall:.3f} s wall, {cpu:.3f} s CPU per volume (medians of {args.timed}; voxel {args.voxel_mm} mm, "
        f"slices {args.slice_mm or 'as voxels'} mm, torch threads {torch.get_num_threads()})"
    )
    splits = ("train", "val")
    fig, axes = plt.subplots(
        len(splits), args.volumes, figsize=(2.6 * args.volumes, 3.0 * len(splits)), dpi=200
    )
    axes = np.atleast_2d(axes)
    for row, split in enumerate(splits):
        for col in range(args.volumes):
            draw(axes[row, col], simulate_lesion_volume(col, split, args.seed, options))
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "lesion_sim_preview.png") as tmp:
        fig.savefig(tmp, format="png")
    print(args.out / "lesion_sim_preview.png")


if __name__ == "__main__":
    main()
