"""The default training data: multi-coil k-space simulated on the fly from MNI152 template slices.

Each ``__getitem__`` runs: template slice (pad/crop to ``size``) -> MONAI augmentation (training only) ->
``SimulateMultiCoild`` (fresh coil maps, image phase, noise) -> ``RandKSpaceMaskd`` (fresh mask) ->
``NormalizeKSpaced``. A sample holds ``Keys.KSPACE`` (C, H, W, 2) masked, ``Keys.MASK`` (1, Hm, W, 1),
``Keys.TARGET`` (H, W) and ``Keys.SENS`` (C, H, W, 2) (true maps), ``Keys.SEG`` (H, W) int64,
``Keys.ACCELERATION``, ``Keys.SCALE``, ``Keys.FNAME`` (``mni_<orientation>.h5``, the name the builder gives
the same slices) and ``Keys.SLICE`` (the template slice index).

Randomness is a pure function of (seed, epoch, index) for training and of (seed, index) for validation: every
item seeds the whole pipeline from ``numpy.random.SeedSequence`` of those numbers, so DataLoader workers never
repeat each other's draws, each epoch differs, and any sample can be rebuilt alone. The epoch reaches the items
through their keys: ``EpochSampler`` yields ``(epoch, index)`` pairs and Lightning calls its ``set_epoch``
before every epoch (a plain ``int`` key means epoch 0). The same keys shard the epoch between DDP processes
and let a resumed run start the epoch where its checkpoint left it (``EpochSampler.resume``): a sample is the
same whichever process, worker or run draws it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from monai.transforms import Compose, DeleteItemsd, RandSpatialCropd
from torch.utils.data import Dataset, DistributedSampler

from medmtl.data.mni import ORIENTATIONS, SimulationOptions, extract_slices, parse_slices, split_slices
from medmtl.data.simulate import SimulateMultiCoild
from medmtl.errors import ConfigError
from medmtl.keys import Keys
from medmtl.transforms.augment import image_augmentation
from medmtl.transforms.intensity import NormalizeKSpaced
from medmtl.transforms.masks import RandKSpaceMaskd, make_mask
from medmtl.transforms.spatial import center_crop_or_pad


def template_slices(
    orientation: str, indices: tuple[int, ...], size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Template slices, centre-padded (with zeros) or cropped to ``size``.

    -> images (S, H, W) float32 in [0, 1], labels (S, H, W) uint8.
    """
    images, labels = extract_slices(orientation, indices)
    if size is not None:
        # The same centring as the k-space crop/pad transforms: pixel n // 2 lands on new // 2.
        images = center_crop_or_pad(torch.from_numpy(images), size, dims=(-2, -1)).numpy()
        labels = center_crop_or_pad(torch.from_numpy(labels), size, dims=(-2, -1)).numpy()
    return images, labels


def check_masks(options: SimulationOptions, shape: Sequence[int]) -> None:
    """Raise ``ConfigError`` now, not later in a worker, if a (acceleration, centre fraction) pair of
    ``options`` cannot make a mask for k-space of ``shape`` (H, W), e.g. a centre larger than the budget."""
    for acceleration, center_fraction in zip(options.accelerations, options.center_fractions):
        make_mask(options.mask, shape, acceleration, center_fraction, rng=0)


def item_seed(*numbers: int) -> int:
    """A 32-bit seed that depends on every number in order (``SeedSequence`` mixes them)."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1)[0])


class EpochSampler(DistributedSampler):
    """Yields this process's ``(epoch, index)`` keys of an epoch, shuffled per epoch when ``shuffle``.

    The epoch's order is a permutation seeded from ``(seed, epoch)`` (or ``0 .. num_samples - 1``), and the
    process of rank ``r`` out of ``num_replicas`` takes every ``num_replicas``-th key from position ``r``, so
    the shares never overlap. Lightning calls ``set_epoch`` before each epoch, so the dataset draws fresh data
    every epoch without any state in the (possibly persistent) worker processes. Being a
    ``DistributedSampler``, it is used as it is under DDP instead of being wrapped in Lightning's sampler,
    whose padding would repeat keys and whose sharding happens after any skip this sampler could do.

    Args:
        num_samples: the dataset's length.
        shuffle: a new permutation every epoch; False keeps index order.
        seed: seed of the permutations.
        num_replicas, rank: the number of processes sharing the epoch and this one's rank.
        drop_last: True (for training) gives every process ``num_samples // num_replicas`` keys, leaving the
            last ``num_samples % num_replicas`` keys of the epoch's order out (other ones every epoch when
            shuffled), because every DDP process must take the same number of steps; False (for evaluation)
            gives every key exactly once, the shares differing in length by one at most. Neither repeats a key,
            unlike ``DistributedSampler``'s padding.
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = True,
    ):
        num_samples = int(num_samples)
        super().__init__(
            range(num_samples),
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.total_size = num_samples - num_samples % num_replicas if drop_last else num_samples
        self.num_samples = len(range(rank, self.total_size, num_replicas))
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self._skip = 0  # a resume point belongs to its epoch
        self.epoch = int(epoch)

    def resume(self, epoch: int, consumed: int) -> None:
        """Make the next pass epoch ``epoch`` without its first ``consumed`` keys, counted over all processes.

        With the same number of processes, this process skips exactly the keys it had taken; with another
        number, each skips ``ceil(consumed / num_replicas)`` keys, so that no key is seen twice and the shares
        stay equal (a few keys may then be left out of that epoch).
        """
        self.epoch = int(epoch)
        self._skip = -(-int(consumed) // self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = np.random.default_rng(item_seed(self.seed, self.epoch)).permutation(len(self.dataset))
        else:
            order = np.arange(len(self.dataset))
        share = order[self.rank : self.total_size : self.num_replicas]
        skip, self._skip = self._skip, 0
        return iter([(self.epoch, int(i)) for i in share[skip:]])

    def __len__(self) -> int:
        return self.num_samples


_TRAIN_STREAM, _VAL_STREAM = 0, 1


class SimulatedKSpaceDataset(Dataset):
    """Simulated multi-coil samples from MNI152 template slices (see the module docstring).

    Args:
        split: ``"train"`` (fresh draws every epoch, augmentation on by default) or ``"val"`` (the same draw for
            an index every time, no augmentation).
        orientations: template orientations to take slices from.
        slices: ``"START:STOP[,...]"`` template slices for every orientation; None takes the default split
            of each orientation (``medmtl.data.mni.DEFAULT_SPLITS``), whose train and val never overlap.
        options: the simulation recipe.
        seed: base seed.
        augment: MONAI augmentation of the image and label before simulation; None means ``split == "train"``.
        samples_per_epoch: the dataset length; None means one sample per slice. Item ``i`` uses slice
            ``i % number of slices``.
        crop: (H, W) of a random window cut from each slice before simulation (after augmentation), so a
            training step costs less while the network, which is fully convolutional and applies data
            consistency on whatever matrix it gets, still sees edges and background; None keeps the slice.
    """

    def __init__(
        self,
        split: str = "train",
        orientations: Sequence[str] = ("axial",),
        slices: str | None = None,
        options: SimulationOptions | None = None,
        seed: int = 0,
        augment: bool | None = None,
        samples_per_epoch: int | None = None,
        crop: Sequence[int] | None = None,
    ):
        if split not in ("train", "val"):
            raise ConfigError("split", f"{split!r} is not 'train' or 'val'")
        if not orientations or any(o not in ORIENTATIONS for o in orientations):
            raise ConfigError("orientations", f"{list(orientations)}; choose from {', '.join(ORIENTATIONS)}")
        self.split = split
        self.options = options or SimulationOptions()
        self.seed = int(seed)
        self.augment = split == "train" if augment is None else augment
        self.items: list[tuple[str, int]] = []  # (orientation, template slice index)
        self._images: dict[str, np.ndarray] = {}
        self._labels: dict[str, np.ndarray] = {}
        self._rows: list[int] = []  # row of each item in its orientation's stack
        for orientation in dict.fromkeys(orientations):
            indices = (
                parse_slices(slices, orientation) if slices is not None else split_slices(orientation, split)
            )
            self._images[orientation], self._labels[orientation] = template_slices(
                orientation, indices, self.options.size
            )
            self.items.extend((orientation, i) for i in indices)
            self._rows.extend(range(len(indices)))
            check_masks(self.options, self._images[orientation].shape[-2:])
        self.samples_per_epoch = len(self.items) if samples_per_epoch is None else int(samples_per_epoch)
        if self.samples_per_epoch < 1:
            raise ConfigError("samples_per_epoch", f"must be at least 1, got {samples_per_epoch}")
        self.crop = None if crop is None else tuple(int(c) for c in crop)
        if self.crop is not None:
            shape = next(iter(self._images.values())).shape[-2:]
            if len(self.crop) != 2 or not all(1 <= c <= s for c, s in zip(self.crop, shape, strict=True)):
                raise ConfigError("crop", f"{list(crop)} must be two sizes within the slice matrix {tuple(shape)}")
            check_masks(self.options, self.crop)
        self.pipeline = self._pipeline()

    def _pipeline(self) -> Compose:
        o = self.options
        steps = [image_augmentation(keys=(Keys.IMAGE, Keys.LABEL))] if self.augment else []
        if self.crop is not None:
            steps.append(RandSpatialCropd(keys=(Keys.IMAGE, Keys.LABEL), roi_size=self.crop, random_size=False))
        steps += [
            SimulateMultiCoild(
                keys=Keys.IMAGE, label_key=Keys.LABEL, num_coils=o.num_coils, noise_level=o.noise_level
            ),
            RandKSpaceMaskd(
                keys=Keys.KSPACE,
                pattern=o.mask,
                accelerations=o.accelerations,
                center_fractions=o.center_fractions,
            ),
            NormalizeKSpaced(),
            DeleteItemsd(keys=(Keys.IMAGE, Keys.LABEL)),
        ]
        return Compose(steps)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        item = index % len(self.items)
        orientation, slice_idx = self.items[item]
        row = self._rows[item]
        sample = {
            Keys.IMAGE: torch.from_numpy(self._images[orientation][row][None].copy()),
            Keys.LABEL: torch.from_numpy(self._labels[orientation][row][None].astype(np.float32)),
            Keys.FNAME: f"mni_{orientation}.h5",
            Keys.SLICE: slice_idx,
        }
        if self.split == "train":
            seed = item_seed(self.seed, _TRAIN_STREAM, epoch, index)
        else:
            seed = item_seed(self.seed, _VAL_STREAM, index)
        self.pipeline.set_random_state(seed=seed)
        return self.pipeline(sample)
