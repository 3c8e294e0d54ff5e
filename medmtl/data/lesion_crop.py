"""Random training windows and axis flips of lesion slice samples (``medmtl.data.lesion_dataset``).

A window of a fixed size is cheaper to train on than a whole slice and, placed on a lesion most of the time,
keeps the share of lesion pixels up. The window and the flips are drawn per item from (seed, epoch, index)
like the slice itself, so runs and resumed runs see the same samples.

A flip reverses the order of the array's rows or columns, or swaps rows and columns (a transpose, the flip
about the diagonal), and moves the patient frame with them (``Keys.PATIENT_FRAME``; the pixel spacing swaps
with a transpose): every pixel keeps its place in the patient, only the array layout changes. So the
array position of a lesion stops telling its side of the body, and a network learns laterality from the
patient frame, which holds in any slice orientation (a network trained on axial slices without flips tagged
the hemisphere below chance on sagittal ones, where the array axes are anterior-posterior and
inferior-superior).

Cropping cuts lesions at the window border: boxes are recomputed from the cut masks (exact, half-open),
lesions left with no pixel are dropped, and the diameters of a cut lesion are measured again on what is left
of it (``measure_recist``), since a box and a mask that end at the border describe that part only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medmtl.data.lesion_geometry import measure_recist
from medmtl.data.online import item_seed
from medmtl.errors import ConfigError
from medmtl.keys import Keys

_CROP_STREAM = 12  # apart from the slice draws' streams (lesion_dataset)
# The chance that a window on a slice with lesions is placed on one of them; the rest are uniform.
LESION_WINDOW_FRACTION = 0.9


def crop_lesion_sample(
    sample: dict[str, Any], size: Sequence[int], rng: np.random.Generator
) -> dict[str, Any]:
    """``sample`` cut to a (h, w) window (smaller axes are kept whole); see the module docstring."""
    context = sample[Keys.CONTEXT]
    height, width = context.shape[-2:]
    h, w = min(int(size[0]), height), min(int(size[1]), width)
    boxes = sample[Keys.BOXES].numpy()
    if len(boxes) and rng.random() < LESION_WINDOW_FRACTION:
        i0, j0, i1, j1 = boxes[rng.integers(len(boxes))]
        ci, cj = (i0 + i1) / 2, (j0 + j1) / 2  # the lesion's centre lands anywhere inside the window
        top = int(np.clip(rng.uniform(ci - h + 1, ci), 0, height - h))
        left = int(np.clip(rng.uniform(cj - w + 1, cj), 0, width - w))
    else:
        top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
    rows, cols = slice(top, top + h), slice(left, left + w)
    masks = sample[Keys.MASKS][:, rows, cols]
    cropped = {}
    if Keys.PATIENT_FRAME in sample:
        frame = sample[Keys.PATIENT_FRAME].clone()
        frame[:, 2] += top * frame[:, 0] + left * frame[:, 1]
        cropped[Keys.PATIENT_FRAME] = frame
    keep = [n for n in range(len(masks)) if bool(masks[n].any())]
    spacing = sample[Keys.PIXEL_SPACING].numpy().astype(np.float64)
    new_boxes = np.zeros((len(keep), 4), np.float32)
    diameters = sample[Keys.DIAMETERS][keep].clone()
    for row, n in enumerate(keep):
        ii, jj = np.nonzero(masks[n].numpy())
        new_boxes[row] = (ii.min(), jj.min(), ii.max() + 1, jj.max() + 1)
        if int(masks[n].sum()) != int(sample[Keys.MASKS][n].sum()):  # cut by the window
            diameters[row] = torch.as_tensor(measure_recist(masks[n].numpy() > 0, spacing)[:2])
    return {
        **sample,
        Keys.CONTEXT: context[..., rows, cols].contiguous(),
        Keys.BOXES: torch.from_numpy(new_boxes),
        Keys.TAGS: sample[Keys.TAGS][keep],
        Keys.MASKS: masks[keep].contiguous(),
        Keys.DIAMETERS: diameters,
        **cropped,
    }


def flip_lesion_sample(sample: dict[str, Any], axis: int) -> dict[str, Any]:
    """``sample`` with the order of its rows (``axis`` 0) or columns (1) reversed: context, boxes, masks and
    the patient frame (module docstring); tags and diameters are unchanged."""
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (rows) or 1 (columns), got {axis}")
    context = sample[Keys.CONTEXT]
    length = context.shape[-2 + axis]
    boxes = sample[Keys.BOXES].clone()
    low, high = boxes[:, axis].clone(), boxes[:, axis + 2].clone()
    boxes[:, axis], boxes[:, axis + 2] = length - high, length - low
    flipped = {
        **sample,
        Keys.CONTEXT: context.flip(-2 + axis),
        Keys.BOXES: boxes,
        Keys.MASKS: sample[Keys.MASKS].flip(-2 + axis),
    }
    if Keys.PATIENT_FRAME in sample:
        frame = sample[Keys.PATIENT_FRAME].clone()
        frame[:, 2] += (length - 1) * frame[:, axis]
        frame[:, axis] = -frame[:, axis]
        flipped[Keys.PATIENT_FRAME] = frame
    return flipped


def transpose_lesion_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """``sample`` with rows and columns swapped: context, boxes, masks, pixel spacing and the patient frame
    (module docstring); tags and diameters are unchanged."""
    transposed = {
        **sample,
        Keys.CONTEXT: sample[Keys.CONTEXT].transpose(-2, -1),
        Keys.BOXES: sample[Keys.BOXES][:, [1, 0, 3, 2]],
        Keys.MASKS: sample[Keys.MASKS].transpose(-2, -1),
    }
    if Keys.PIXEL_SPACING in sample:
        transposed[Keys.PIXEL_SPACING] = sample[Keys.PIXEL_SPACING].flip(0)
    if Keys.PATIENT_FRAME in sample:
        transposed[Keys.PATIENT_FRAME] = sample[Keys.PATIENT_FRAME][:, [1, 0, 2]]
    return transposed


class CroppedLesionSlices(Dataset):
    """A training ``LesionSliceDataset`` whose samples are cut to ``size`` windows (None: whole slices) and,
    with ``flip``, have their rows reversed, their columns reversed and the two swapped, each with
    probability 1/2 (one of the 8 layouts of the square, uniformly; see the module docstring).

    Keys are ``(epoch, index)`` (``EpochSampler``) or plain indices (epoch 0).
    """

    def __init__(self, dataset: Dataset, size: Sequence[int] | None, seed: int = 0, flip: bool = False):
        if size is not None and (len(size) != 2 or min(int(s) for s in size) < 8):
            raise ConfigError("lesions.train_crop", f"must be (h, w) of at least 8 pixels, got {list(size)}")
        self.dataset, self.seed, self.flip = dataset, int(seed), bool(flip)
        self.size = None if size is None else (int(size[0]), int(size[1]))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng(item_seed(self.seed, _CROP_STREAM, epoch, index))
        sample = self.dataset[(epoch, index)]
        if self.size is not None:
            sample = crop_lesion_sample(sample, self.size, rng)
        if self.flip:
            # Drawn after the window, so a run without flips sees the windows it saw before flips existed.
            rows, cols, swap = rng.random(3) < 0.5
            for axis, coin in enumerate((rows, cols)):
                if coin:
                    sample = flip_lesion_sample(sample, axis)
            if swap:
                sample = transpose_lesion_sample(sample)
        return sample
