"""How visible a lobulated border is in the simulated lesions, from their true masks: the tag AUC of one
shape measure, 1 - solidity (the mask's area over its convex hull's), for ``lobulated`` against ``smooth``.

It scores each lesion of the held-out volumes twice: on its key slice (the 2D mask the network's key image
shows) and over its whole 3D mask (convex hull of the voxels' corners, in mm); rows split the lesions at
10 mm long axis. The truth is the drawn border (``meta["lobulated"]``), also for the lesions below 10 mm
whose border tags the simulator leaves uncertain; the rows at or above 10 mm are the lesions the tags
score. A network that saw the true mask would still have to find the border from these few
pixels: the AUC says how far shape alone separates the two tags at the simulated resolution (a lower bound
on what a better measure could reach, not a ceiling).

    .venv/bin/python benchmarks/lesion_border_oracle.py --split test
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from lesion_sizes import REPO, lesion_options
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import regionprops

from medmtl.data.lesion_data import lesion_volumes
from medmtl.metrics.tag_metrics import tag_auc

_CORNERS = np.array(np.meshgrid(*[[-0.5, 0.5]] * 3, indexing="ij")).reshape(3, -1).T  # (8, 3)


def solidity_3d(mask: np.ndarray, spacing: np.ndarray) -> float:
    """Volume of a 3D mask over that of the convex hull of its voxels' corners (both in mm^3)."""
    points = ((np.argwhere(mask)[:, None] + _CORNERS[None]) * spacing).reshape(-1, 3)
    try:
        return float(mask.sum() * np.prod(spacing) / ConvexHull(points).volume)
    except QhullError:  # a flat mask (one voxel thick in every direction) has no 3D hull
        return 1.0


def border_scores(volumes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lobulated (N,) bool, long axis mm (N,), key-slice solidity (N,), 3D solidity (N,))."""
    lobulated, long_mm, flat, solid = [], [], [], []
    for volume in volumes:
        for label, lesion in enumerate(volume.lesions, start=1):
            mask = volume.instances == label
            flat.append(regionprops(mask[:, :, lesion.key_slice].astype(np.uint8))[0].solidity)
            solid.append(solidity_3d(mask, np.asarray(volume.spacing, np.float64)))
            lobulated.append(bool(volume.meta["lobulated"][label - 1]))
            long_mm.append(lesion.long_axis_mm)
    return np.array(lobulated), np.array(long_mm), np.array(flat), np.array(solid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "lesion_mni.yaml")
    parser.add_argument("--split", choices=("val", "test"), default="test")
    args = parser.parse_args()
    volumes = lesion_volumes(lesion_options(args.config), args.split, 0)
    lobulated, long_mm, flat, solid = border_scores(volumes)
    print(f"{args.split} volumes: {len(lobulated)} lesions, {int(lobulated.sum())} lobulated")
    print("| lesions | n | AUC, key-slice mask | AUC, 3D mask |\n|---|---|---|---|")
    rows = (("all", long_mm >= 0), ("long axis < 10 mm", long_mm < 10), (">= 10 mm", long_mm >= 10))
    for name, keep in rows:
        labels = lobulated[keep, None]
        scores = [tag_auc(1 - s[keep, None], labels)[0] for s in (flat, solid)]
        print(f"| {name} | {int(keep.sum())} | {scores[0]:.2f} | {scores[1]:.2f} |")


if __name__ == "__main__":
    main()
