"""``MultitaskDataModule``: the simulated MNI152 default data, or folders of k-space HDF5 files; or, with
``lesions``, lesion volumes (``medmtl.data.lesion_data``).

Each stage takes its folder when one is given (``train_dir``, ``val_dir``, ``test_dir``, ``predict_dir``, read
through ``KSpaceSliceDataset``) and otherwise, for ``fit`` and ``validate``, the online simulator
(``SimulatedKSpaceDataset``: fresh draws every training epoch, fixed validation draws, disjoint slices). Test
and predict need a folder.

Training, validation and test batches come through ``EpochSampler``'s ``(epoch, index)`` keys, files included
(their random masks are then seeded per key, like the simulator's draws). Under DDP each process takes its share of
every epoch, without repeats (``EpochSampler``), and the reduced metrics cover every validation sample once. A
checkpoint stores how far into its epoch training was (``state_dict``), and a run resumed from it starts that
epoch's sampler there, so that it sees the same batches as an uninterrupted run.

A batch stacks every tensor key with a leading batch dimension and keeps ``Keys.FNAME`` and ``Keys.SLICE`` as
lists. Samples only stack when they share their shapes: the default simulator (one orientation, the
template's matrix) does; several orientations need ``simulation.size``, and a folder of files of different
matrix sizes needs ``batch_size=1``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from monai.data.utils import worker_init_fn
from monai.transforms import Compose, Randomizable
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from medmtl.data.files import KSpaceSliceDataset
from medmtl.data.lesion_data import LesionData, lesion_dataset
from medmtl.data.lesion_dataset import collate_lesion_samples
from medmtl.data.mni import SimulationOptions, parse_slices, split_slices
from medmtl.data.online import EpochSampler, SimulatedKSpaceDataset, item_seed
from medmtl.errors import ConfigError
from medmtl.keys import Keys
from medmtl.transforms.context import DEFAULT_INTERVAL_MM, DEFAULT_NUM_SLICES
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


class KeyedFiles(Dataset):
    """A ``KSpaceSliceDataset`` indexed with ``EpochSampler``'s ``(epoch, index)`` keys (a plain ``int`` means
    epoch 0).

    Its transform's random draws (the masks of ``remask_files``) are seeded from (seed, epoch, index), so a
    sample is the same in every run, in any worker process, and after a resume.
    """

    def __init__(self, files: KSpaceSliceDataset, seed: int):
        self.files = files
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if isinstance(self.files.transform, Randomizable):
            self.files.transform.set_random_state(seed=item_seed(self.seed, epoch, index))
        return self.files[index]


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
        train_crop: (H, W) random window of each simulated training slice (``SimulatedKSpaceDataset``'s
            ``crop``); validation keeps whole slices.
        remask_files: draw new masks for files (for fully sampled files such as fastMRI's training set):
            random every time for training, fixed per (file, slice) for the other stages. Otherwise the
            file's stored (or derived) mask is used.
        seed: base seed of every random draw.
        pin_memory, persistent_workers: passed to the DataLoaders.
        lesions: lesion data instead of k-space (``LesionData``: simulated, NIfTI or DeepLesion volumes);
            the k-space arguments are then unused, ``samples_per_epoch`` counts training slices, and the
            slice layout and intensity window come from the network being trained (its input contract).
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
        train_crop: Sequence[int] | None = None,
        remask_files: bool = False,
        seed: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        lesions: LesionData | None = None,
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
        self.train_crop = train_crop
        self.remask_files = remask_files
        self.seed = seed
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.lesions = lesions
        if lesions is None:
            self._check_disjoint()
        self.datasets: dict[str, Dataset] = {}
        self._resume_at: tuple[int, int] | None = None  # (epoch, keys consumed) from a checkpoint

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

    def _file_dataset(self, stage: str) -> KSpaceSliceDataset | KeyedFiles:
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
        files = KSpaceSliceDataset(self.dirs[stage], transform=Compose(steps))
        # Prediction keeps plain indices and Lightning's sampler (one device, see PredictionWriter).
        return files if stage == "predict" else KeyedFiles(files, self.seed)

    def _lesion_dataset(self, stage: str) -> Dataset:
        if stage == "predict":
            raise ConfigError(
                "predict", "lesion models predict volumes with `medmtl lesion`, not `medmtl predict`"
            )
        model = getattr(getattr(self.trainer, "lightning_module", None), "model", None)
        return lesion_dataset(
            self.lesions,
            stage,
            self.seed,
            self.samples_per_epoch,
            num_slices=getattr(model, "num_slices", DEFAULT_NUM_SLICES),
            interval_mm=getattr(model, "interval_mm", DEFAULT_INTERVAL_MM),
            window=getattr(model, "window", None),
        )

    def _dataset(self, stage: str) -> Dataset:
        if self.lesions is not None:
            return self._lesion_dataset(stage)
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
            crop=self.train_crop if stage == "train" else None,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the Lightning ``stage`` needs (fit: train and val; validate; test; predict)."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for name in needed[stage or "fit"]:
            if name not in self.datasets:
                self.datasets[name] = self._dataset(name)

    def _world(self) -> tuple[int, int]:
        """(number of processes, this one's rank) of the attached trainer; (1, 0) without one."""
        trainer = self.trainer
        return (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)

    def _loader(self, name: str) -> DataLoader:
        if name not in self.datasets:
            self.datasets[name] = self._dataset(name)
        dataset = self.datasets[name]
        sampler = None
        if name != "predict":
            replicas, rank = self._world()
            training = name == "train"
            if len(dataset) < replicas:  # a process without batches would wait forever in the collectives
                key = "samples_per_epoch" if training else f"{name}_slices"
                raise ConfigError(
                    f"{name}_dir" if self.dirs[name] is not None else key,
                    f"{len(dataset)} {name} sample(s) for {replicas} processes; each needs at least one",
                )
            sampler = EpochSampler(
                len(dataset),
                shuffle=training,
                seed=self.seed,
                num_replicas=replicas,
                rank=rank,
                drop_last=training,
            )
            if training and self._resume_at is not None:
                sampler.resume(*self._resume_at)
                self._resume_at = None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_samples if self.lesions is None else collate_lesion_samples,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            # Gives each worker its own random state (the simulator and KeyedFiles reseed per item anyway).
            worker_init_fn=worker_init_fn,
            # Worker seeds come from here, not from torch's global generator, which the loader then leaves
            # alone: a resumed run restores that generator and must find it where the interrupted run left it.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """The training data position, stored in every checkpoint: ``{"epoch": E, "consumed": N}``, the epoch
        the run is in and the keys of it that the training loop has processed, over all processes.

        It is read from Lightning's own batch count, not from the loader, which runs ahead of the training
        step (Lightning prefetches a batch, and worker processes several).
        """
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        epoch = trainer.current_epoch
        if batches >= trainer.num_training_batches:  # saved at the end of the epoch: resume with the next one
            return {"epoch": epoch + 1, "consumed": 0}
        return {"epoch": epoch, "consumed": batches * self.batch_size * trainer.world_size}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Start the next training loader at the stored position (see ``state_dict``)."""
        if not state_dict:
            return
        self._resume_at = (int(state_dict["epoch"]), int(state_dict["consumed"]))
        # The train loader is resumable through this state, which Lightning cannot see: it only looks for
        # state_dict/load_state_dict on the DataLoader objects themselves.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
