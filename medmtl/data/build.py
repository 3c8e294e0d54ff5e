"""Build the default dataset: k-space HDF5 files (fastMRI layout) simulated from the MNI152 template.

One file per orientation and split, ``mni_<orientation>.h5``, holding, for its S template slices:
``kspace`` (S, C, H, W) complex64 undersampled (zero off the mask), ``mask`` (W,) for 1D patterns or (H, W)
for 2D ones, shared by every slice of the file as in fastMRI's test set, ``target`` (S, H, W) float32 (the
clean magnitude), ``segmentation`` (S, H, W) uint8, and the attributes ``acceleration`` (the requested one),
``center_fraction``, ``mask_pattern``, ``noise_level``, ``seed``, ``orientation``, ``template_slices``
(JSON list: the template slice index of each file slice), ``classes`` (JSON list, index = label), ``max``
and ``norm`` (fastMRI's: the target's maximum and Frobenius norm) and ``source``.

Every draw is seeded from ``seed``: a slice's coil maps, phase and noise from (seed, orientation, template slice
index), so the same slice gets the same data whichever range it is built in, and a file's mask from (seed,
the file's path relative to the output folder).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medmtl.data.mni import ORIENTATIONS, SimulationOptions, parse_slices, split_slices
from medmtl.data.online import template_slices
from medmtl.data.simulate import SimulateMultiCoil
from medmtl.errors import ConfigError
from medmtl.io.kspace import write_kspace_h5
from medmtl.keys import MNI_CLASSES
from medmtl.transforms.masks import make_mask

SPLITS = ("train", "val")
SOURCE = "MNI152 ICBM 2009a nonlinear symmetric T1 template with GM/WM probability maps, from nilearn"


def slice_seed(seed: int, orientation: str, index: int) -> int:
    """Seed of one template slice's simulation (coil maps, phase, noise)."""
    return int(np.random.SeedSequence([seed, ORIENTATIONS.index(orientation), index]).generate_state(1)[0])


def build_file(
    path: str | os.PathLike,
    orientation: str,
    indices: Sequence[int],
    options: SimulationOptions,
    seed: int,
    mask_key: str,
    progress: tqdm | None = None,
) -> Path:
    """Simulate ``indices`` (template slices of ``orientation``) into one k-space file at ``path``.

    ``mask_key`` names the file for its mask seed (use its path relative to the dataset root).
    """
    images, labels = template_slices(orientation, tuple(indices), options.size)
    height, width = images.shape[-2:]
    rng = np.random.default_rng([seed, zlib.crc32(mask_key.encode())])
    pair = int(rng.integers(len(options.accelerations)))
    acceleration, center_fraction = options.accelerations[pair], options.center_fractions[pair]
    mask = make_mask(options.mask, (height, width), acceleration, center_fraction, rng)  # (Hm, W)
    simulator = SimulateMultiCoil(options.num_coils, options.noise_level)

    kspace = np.empty((len(indices), options.num_coils, height, width), dtype=np.complex64)
    for i, index in enumerate(indices):
        simulator.set_random_state(seed=slice_seed(seed, orientation, index))
        sim = simulator(images[i : i + 1])
        kspace[i] = np.ascontiguousarray(sim.kspace.numpy()).view(np.complex64)[..., 0] * mask
        if progress is not None:
            progress.update(1)
    target = np.abs(images)
    attrs = {
        "acceleration": float(acceleration),
        "center_fraction": float(center_fraction),
        "mask_pattern": options.mask,
        "noise_level": float(options.noise_level),
        "seed": int(seed),
        "orientation": orientation,
        "template_slices": json.dumps([int(i) for i in indices]),
        "classes": json.dumps(list(MNI_CLASSES)),
        "max": float(target.max()),
        "norm": float(np.linalg.norm(target)),
        "source": SOURCE,
    }
    return write_kspace_h5(
        path,
        kspace,
        mask=mask[0] if mask.shape[0] == 1 else mask,
        target=target,
        segmentation=labels,
        attrs=attrs,
    )


def build_mni_dataset(
    out: str | os.PathLike,
    orientations: Sequence[str] = ("axial",),
    slices: str | None = None,
    splits: Sequence[str] = SPLITS,
    options: SimulationOptions | None = None,
    seed: int = 0,
    show_progress: bool | None = None,
) -> list[Path]:
    """Write the default dataset under ``out``; returns the files written.

    With ``slices`` (``"START:STOP[,...]"``) each orientation gives ``out/mni_<orientation>.h5`` of those
    slices. Without, each of ``splits`` gives ``out/<split>/mni_<orientation>.h5`` of the default split
    (``medmtl.data.mni.DEFAULT_SPLITS``). ``show_progress``: a tqdm bar on stderr (None: only on a terminal).
    """
    options = options or SimulationOptions()
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ConfigError("split", f"{unknown or 'none'}; choose from {', '.join(SPLITS)}")
    if not orientations:
        raise ConfigError("orientation", "no orientation given")
    jobs: list[tuple[Path, str, tuple[int, ...]]] = []
    for orientation in dict.fromkeys(orientations):
        name = f"mni_{orientation}.h5"
        if slices is not None:
            jobs.append((Path(name), orientation, parse_slices(slices, orientation)))
        else:
            jobs.extend(
                (Path(split, name), orientation, split_slices(orientation, split)) for split in splits
            )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(out, "exists and is not a folder")
    written = []
    total = sum(len(indices) for _, _, indices in jobs)
    disable = None if show_progress is None else not show_progress
    with tqdm(total=total, unit="slice", desc="medmtl data mni", disable=disable) as bar:
        for relative, orientation, indices in jobs:
            written.append(
                build_file(out / relative, orientation, indices, options, seed, relative.as_posix(), bar)
            )
    return written
