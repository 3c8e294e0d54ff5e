"""``MultitaskDataModule``: the simulated MNI152 default data, or folders of k-space HDF5 files.

Each stage takes its folder when one is given (``train_dir``, ``val_dir``, ``test_dir``, ``predict_dir``, read
through ``KSpaceSliceDataset``) and otherwise, for ``fit`` and ``validate``, the online simulator
(``SimulatedKSpaceDataset``: fresh draws every training epoch, fixed validation draws, disjoint slices). Test
and predict need a folder.

A batch stacks every tensor key with a leading batch dimension and keeps ``Keys.FNAME`` and ``Keys.SLICE`` as
lists. Samples only stack when they share their shapes: the default simulator (one orientation, the
template's matrix) does; several orientations need ``simulation.size``, and a folder of files of different
matrix sizes needs ``batch_size=1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from monai.data.utils import worker_init_fn
from monai.transforms import Compose
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from medmtl.data.files import KSpaceSliceDataset
from medmtl.data.mni import SimulationOptions, parse_slices, split_slices
from medmtl.data.online import EpochSampler, SimulatedKSpaceDataset
from medmtl.errors import ConfigError
from medmtl.keys import Keys
from medmtl.transforms.intensity import NormalizeKSpaced
from medmtl.transforms.masks import RandKSpaceMaskd

LIST_KEYS = (Keys.FNAME, Keys.SLICE)


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A list of sample dicts -> one batch dict: tensors stacked on a new first axis, names and slices as lists."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if key in LIST_KEYS:
            batch[key] = list(values)
            continue
        try:
            batch[key] = default_collate(values)
        except RuntimeError as err:
            shapes = sorted({tuple(torch.as_tensor(v).shape) for v in values})
            raise ConfigError(
                "batch",
                f"`{key}` has shapes {shapes} within one batch; set simulation.size or use batch_size=1",
            ) from err
    return batch


class MultitaskDataModule(LightningDataModule):
    """Simulated default data or k-space folders, batched for the multitask model.

    Args:
        train_dir, val_dir, test_dir, predict_dir: folders (or single files) of k-space HDF5 files; a missing
            train or val folder means the simulated MNI152 data.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        orientations: template orientations of the simulated data.
        train_slices, val_slices: ``"START:STOP[,...]"`` template slices; None takes the default split
            (``medmtl.data.mni.DEFAULT_SPLITS``). They must not overlap.
        simulation: coils, noise, masks and matrix size of the simulated data; also the masks drawn for
            files when ``remask_files`` is set.
        samples_per_epoch: simulated training samples per epoch; None means one per training slice.
        augment: MONAI augmentation of simulated training images.
        remask_files: draw new masks for files (for fully sampled files such as fastMRI's training set):
            random every time for training, fixed per (file, slice) for the other stages. Otherwise the
            file's stored (or derived) mask is used.
        seed: base seed of every random draw.
        pin_memory, persistent_workers: passed to the DataLoaders.
    """

    def __init__(
        self,
        train_dir: str | None = None,
        val_dir: str | None = None,
        test_dir: str | None = None,
        predict_dir: str | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        orientations: Sequence[str] = ("axial",),
        train_slices: str | None = None,
        val_slices: str | None = None,
        simulation: SimulationOptions | None = None,
        samples_per_epoch: int | None = None,
        augment: bool = True,
        remask_files: bool = False,
        seed: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ):
        super().__init__()
        if batch_size < 1:
            raise ConfigError("batch_size", f"must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError("num_workers", f"must be >= 0, got {num_workers}")
        self.dirs = {"train": train_dir, "val": val_dir, "test": test_dir, "predict": predict_dir}
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.orientations = tuple(orientations)
        self.slices = {"train": train_slices, "val": val_slices}
        self.simulation = simulation or SimulationOptions()
        self.samples_per_epoch = samples_per_epoch
        self.augment = augment
        self.remask_files = remask_files
        self.seed = seed
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self._check_disjoint()
        self.datasets: dict[str, Dataset] = {}

    def _check_disjoint(self) -> None:
        if self.dirs["train"] is not None or self.dirs["val"] is not None:
            return
        for orientation in self.orientations:
            chosen = {
                split: set(
                    parse_slices(spec, orientation) if spec is not None else split_slices(orientation, split)
                )
                for split, spec in self.slices.items()
            }
            overlap = sorted(chosen["train"] & chosen["val"])
            if overlap:
                raise ConfigError(
                    "val_slices",
                    f"{len(overlap)} {orientation} slice(s) are also training slices ({overlap[0]}..{overlap[-1]})",
                )

    def _file_dataset(self, stage: str) -> KSpaceSliceDataset:
        steps = []
        if self.remask_files:
            o = self.simulation
            steps.append(
                RandKSpaceMaskd(
                    pattern=o.mask,
                    accelerations=o.accelerations,
                    center_fractions=o.center_fractions,
                    keep_existing_mask=False,
                    fixed_seed=None if stage == "train" else self.seed,
                )
            )
        steps.append(NormalizeKSpaced(allow_missing_keys=True))  # test and predict files may have no target
        return KSpaceSliceDataset(self.dirs[stage], transform=Compose(steps))

    def _dataset(self, stage: str) -> Dataset:
        if self.dirs[stage] is not None:
            return self._file_dataset(stage)
        if stage not in ("train", "val"):
            raise ConfigError(f"{stage}_dir", f"the {stage} stage needs a folder of k-space files")
        return SimulatedKSpaceDataset(
            split=stage,
            orientations=self.orientations,
            slices=self.slices[stage],
            options=self.simulation,
            seed=self.seed,
            augment=self.augment and stage == "train",
            samples_per_epoch=self.samples_per_epoch if stage == "train" else None,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the Lightning ``stage`` needs (fit: train and val; validate; test; predict)."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for name in needed[stage or "fit"]:
            if name not in self.datasets:
                self.datasets[name] = self._dataset(name)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if name not in self.datasets:
            self.datasets[name] = self._dataset(name)
        dataset = self.datasets[name]
        sampler = None
        if isinstance(dataset, SimulatedKSpaceDataset):
            # (epoch, index) keys: Lightning's set_epoch on this sampler gives every epoch fresh draws.
            sampler, shuffle = EpochSampler(len(dataset), shuffle=shuffle, seed=self.seed), False
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            # Gives each worker its own random state for the file transforms (the simulator seeds per item).
            worker_init_fn=worker_init_fn,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
