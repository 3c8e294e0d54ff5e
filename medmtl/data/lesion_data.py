"""Lesion data for ``MultitaskDataModule`` (``data.lesions`` in a config): where the volumes come from and how
slices are drawn from them.

Sources:

- ``simulated`` (default, no download): ``SimulatedLesionVolumes`` of the MNI152 template, ``num_volumes`` per
  split; training volumes are axial and coronal, validation and test volumes sagittal, so evaluation sees
  orientations and lesion draws never trained on (``medmtl.data.lesion_sim``).
- ``nifti``: an nnDetection-style folder (``LesionNiftiIndex``): ``imagesTr``/``labelsTr`` for training and
  validation (split by case, ``val_fraction`` of the cases), ``imagesTs``/``labelsTs`` for test.
- ``deeplesion``: a DeepLesion folder (``DeepLesionIndex``) and its official train, val and test splits;
  ``window`` of the network should then be a CT window in HU.

Training draws random slices (``LesionSliceDataset``); validation and test evaluate the key slice of every
lesion and the middle slice of every lesion-free volume (``KeySliceDataset``, DeepLesion's protocol).

Fresh lesions (``rotate_volumes``, simulated source): the training pool keeps ``num_volumes["train"]``
volumes in memory, and after every epoch ``rotate_volumes`` of them, oldest first, are replaced by volumes never
drawn before (``RotatingVolumes``). With a fixed pool a small network memorises its few hundred lesions' tags
and boxes (its training losses keep falling while the validation ones stall); rotation shows it thousands of
lesion draws for the cost of simulating them (about 0.2 s each at 1 mm in-plane, in the loader worker).

Volumes are cached in memory (``cache``): a training slice is drawn from a volume again and again, and making a
simulated volume (about a second at 1 mm in-plane) or reading a series of PNGs costs far more than a step. The
cache is per DataLoader worker and holds every volume of a split; each simulated volume at 1 mm in-plane with
2-5 mm slices takes about 20 MB.

The slice layout (context slices, their interval) and the intensity window are the network's input contract
(``LesionNet.num_slices``, ``interval_mm``, ``window``): the data module takes them from the model it trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from torch.utils.data import Dataset

from medmtl.data.lesion_crop import CroppedLesionSlices
from medmtl.data.lesion_dataset import KeySliceDataset, LesionSliceDataset
from medmtl.data.lesion_record import LesionVolume
from medmtl.data.lesion_sim import LesionSimOptions, SimulatedLesionVolumes
from medmtl.errors import ConfigError

Source = Literal["simulated", "nifti", "deeplesion"]


@dataclass(frozen=True)
class LesionData:
    """Lesion volumes and slice sampling (see the module docstring).

    Args:
        source: ``simulated``, ``nifti`` or ``deeplesion``.
        root: the folder of a ``nifti`` or ``deeplesion`` source.
        tags_json: DeepLesion's optional tag file.
        num_volumes: simulated volumes per split (train, val, test).
        simulation: how simulated volumes are made.
        positive_fraction: training: the probability of drawing a slice that holds a lesion.
        train_crop: (h, w) random training windows (``medmtl.data.lesion_crop``), mostly placed on a lesion;
            None trains on whole slices. Evaluation always sees whole slices.
        train_flip: reverse the rows, reverse the columns and swap the two in each training sample, each
            with probability 1/2, with the patient frame (``medmtl.data.lesion_crop``), so that laterality
            must come from the frame rather than the array position.
        val_fraction: ``nifti``: the share of ``imagesTr`` cases held out for validation (the last ones).
        cache: keep every volume of a split in memory once read.
        rotate_volumes: simulated source: training volumes replaced by fresh draws after each epoch
            (``RotatingVolumes``); 0 keeps the same ``num_volumes["train"]`` volumes throughout.
    """

    source: Source = "simulated"
    root: str | None = None
    tags_json: str | None = None
    num_volumes: dict[str, int] = field(default_factory=lambda: {"train": 96, "val": 16, "test": 32})
    simulation: LesionSimOptions = field(default_factory=LesionSimOptions)
    positive_fraction: float = 0.7
    train_crop: tuple[int, int] | None = None
    train_flip: bool = False
    val_fraction: float = 0.2
    cache: bool = True
    rotate_volumes: int = 0

    def __post_init__(self) -> None:
        if self.source not in ("simulated", "nifti", "deeplesion"):
            raise ConfigError("lesions.source", f"{self.source!r} is not simulated, nifti or deeplesion")
        if self.source != "simulated" and not self.root:
            raise ConfigError("lesions.root", f"the {self.source} source needs a folder")
        for split, n in self.num_volumes.items():
            if split not in ("train", "val", "test") or int(n) != n or n < 1:
                raise ConfigError("lesions.num_volumes", f"{split}: {n}; expected train/val/test counts >= 1")
        if not 0 <= self.positive_fraction <= 1:
            raise ConfigError("lesions.positive_fraction", f"must be in [0, 1], got {self.positive_fraction}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError("lesions.val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        if int(self.rotate_volumes) != self.rotate_volumes or self.rotate_volumes < 0:
            raise ConfigError(
                "lesions.rotate_volumes", f"must be a whole number >= 0, got {self.rotate_volumes}"
            )
        if self.rotate_volumes and self.source != "simulated":
            raise ConfigError(
                "lesions.rotate_volumes",
                f"draws new simulated volumes; the {self.source} source has a fixed set",
            )


class CachedVolumes(Sequence):
    """A sequence of volumes that keeps each one after its first read."""

    def __init__(self, volumes: Sequence[LesionVolume]):
        self.volumes = volumes
        self.tag_names = getattr(volumes, "tag_names", ())
        self._cache: dict[int, LesionVolume] = {}

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> LesionVolume:
        if index not in self._cache:
            self._cache[index] = self.volumes[index]
        return self._cache[index]


class RotatingVolumes(Sequence):
    """A training pool of ``pool`` volume slots over a long lazy sequence of volumes (``SimulatedLesionVolumes``),
    ``rotate`` slots of which take a volume never used before at the start of every epoch.

    Replacement j (0, 1, 2, ...) puts volume ``pool + j`` into slot ``j % pool``, and epoch e has had e * rotate
    replacements, so the volume in a slot at an epoch (``volume_id``) is a pure function of (slot, epoch): a run
    resumed at an epoch sees the volumes an uninterrupted one would. Each slot caches its current volume (one
    pool in memory per DataLoader worker). Indexing with a plain slot gives epoch 0's volume.
    """

    def __init__(self, volumes: Sequence[LesionVolume], pool: int, rotate: int):
        if pool < 1 or rotate < 0:
            raise ConfigError("RotatingVolumes", f"pool >= 1 and rotate >= 0, got {pool} and {rotate}")
        self.volumes, self.pool, self.rotate = volumes, int(pool), int(rotate)
        self._slots: dict[int, tuple[int, LesionVolume]] = {}

    def __len__(self) -> int:
        return self.pool

    def volume_id(self, slot: int, epoch: int) -> int:
        """The index into ``volumes`` of the volume in ``slot`` during ``epoch``."""
        if not 0 <= slot < self.pool:
            raise IndexError(f"slot {slot} out of range for a pool of {self.pool}")
        done = max(int(epoch), 0) * self.rotate  # replacements before this epoch
        if done <= slot:
            return slot
        return self.pool + slot + self.pool * ((done - 1 - slot) // self.pool)

    def for_epoch(self, epoch: int, slot: int) -> LesionVolume:
        """The volume in ``slot`` during ``epoch``."""
        index = self.volume_id(slot, epoch)
        cached = self._slots.get(slot)
        if cached is None or cached[0] != index:
            if index >= len(self.volumes):
                raise IndexError(f"volume {index} is past the {len(self.volumes)} volumes to rotate through")
            cached = self._slots[slot] = (index, self.volumes[index])
        return cached[1]

    def __getitem__(self, slot: int) -> LesionVolume:
        return self.for_epoch(0, slot)


class _Subset(Sequence):
    def __init__(self, volumes: Sequence[LesionVolume], indices: Sequence[int]):
        self.volumes, self.indices = volumes, list(indices)
        self.tag_names = getattr(volumes, "tag_names", ())

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> LesionVolume:
        return self.volumes[self.indices[index]]


def lesion_volumes(options: LesionData, split: str, seed: int) -> Sequence[LesionVolume]:
    """The volumes of ``split`` ("train", "val" or "test") from ``options``' source."""
    if options.source == "simulated":
        count = options.num_volumes.get(split, LesionData().num_volumes[split])
        if split == "train" and options.rotate_volumes:
            # Lazy: volume i is made only when a slot first needs it; 2**31 lasts any run.
            endless = SimulatedLesionVolumes(2**31 - 1, split, seed=seed, options=options.simulation)
            return RotatingVolumes(endless, count, options.rotate_volumes)
        volumes = SimulatedLesionVolumes(count, split, seed=seed, options=options.simulation)
    elif options.source == "deeplesion":
        from medmtl.data.deeplesion import DeepLesionIndex

        volumes = DeepLesionIndex(options.root, split=split, tags_json=options.tags_json)
    else:
        from medmtl.data.lesion_nifti import LesionNiftiIndex

        if split == "test":
            volumes = LesionNiftiIndex(options.root, split="Ts")
        else:
            cases = LesionNiftiIndex(options.root, split="Tr")
            held = max(1, round(len(cases) * options.val_fraction))
            if held >= len(cases):
                raise ConfigError("lesions.val_fraction", f"leaves no training case of {len(cases)}")
            rows = np.arange(len(cases))
            volumes = _Subset(cases, rows[:-held] if split == "train" else rows[-held:])
    return CachedVolumes(volumes) if options.cache else volumes


def lesion_dataset(
    options: LesionData,
    split: str,
    seed: int,
    samples_per_epoch: int | None,
    num_slices: int,
    interval_mm: float,
    window: Sequence[float] | None,
) -> Dataset:
    """The slice dataset of ``split`` with the network's input contract (``num_slices``, ``interval_mm``,
    ``window``); training draws ``samples_per_epoch`` slices per epoch (None: 8 per volume)."""
    volumes = lesion_volumes(options, split, seed)
    window = None if window is None else (float(window[0]), float(window[1]))
    if split != "train":
        return KeySliceDataset(volumes, num_slices, interval_mm, window)
    slices = LesionSliceDataset(
        volumes,
        split=split,
        samples_per_epoch=samples_per_epoch or 8 * len(volumes),
        positive_fraction=options.positive_fraction,
        num_slices=num_slices,
        interval_mm=interval_mm,
        window=window,
        seed=seed,
    )
    if options.train_crop is None and not options.train_flip:
        return slices
    return CroppedLesionSlices(slices, options.train_crop, seed, flip=options.train_flip)
