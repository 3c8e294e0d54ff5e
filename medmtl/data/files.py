"""A torch ``Dataset`` over the slices of k-space HDF5 files (fastMRI layout, see ``medmtl.io.kspace``)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medmtl.io.kspace import KSpaceFile, expand_kspace_paths
from medmtl.keys import Keys

# Open h5py handles kept per process; beyond this the least recently used one is closed, so that a
# folder of thousands of files does not run out of file descriptors.
MAX_OPEN_FILES = 32


def kspace_to_tensor(kspace: np.ndarray) -> torch.Tensor:
    """Complex numpy (..., H, W) -> real tensor (..., H, W, 2) float32 (real, imaginary)."""
    return torch.view_as_real(torch.from_numpy(np.ascontiguousarray(kspace, dtype=np.complex64))).clone()


class KSpaceSliceDataset(Dataset):
    """Every slice of every file, indexed as (file, slice) from the file headers alone.

    ``paths``: a file, a folder (its ``*.h5`` files, sorted) or a list of either. ``transform``: a
    callable applied to each sample dict (a MONAI ``Compose``, say).

    A sample holds ``Keys.KSPACE`` (C, H, W, 2) float32, zero off the mask; ``Keys.MASK``
    (1, Hm, W, 1) float32; ``Keys.TARGET`` (Ht, Wt) float32 and ``Keys.SEG`` (Hs, Ws) int64 when the
    file has them (the target may be smaller than k-space, as in fastMRI: crop the image to it);
    ``Keys.FNAME`` (the file's name) and ``Keys.SLICE`` (int).

    h5py handles cannot be pickled or shared across ``fork``, so each worker process opens the files
    it needs on first use and keeps them open (``MAX_OPEN_FILES`` at most).
    """

    def __init__(
        self,
        paths: str | os.PathLike | Iterable[str | os.PathLike],
        transform: Callable[[dict[str, Any]], Any] | None = None,
    ):
        self.files = expand_kspace_paths(paths)
        self.transform = transform
        index = []
        for file_idx, path in enumerate(self.files):
            with KSpaceFile(path) as f:
                index.extend((file_idx, s) for s in range(f.num_slices))
        self._index = index
        self._handles: OrderedDict[Path, KSpaceFile] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._index)

    def _file(self, path: Path) -> KSpaceFile:
        if self._pid != os.getpid():
            # A forked worker inherited the parent's handles; HDF5 state is not fork-safe, so start afresh.
            self._handles = OrderedDict()
            self._pid = os.getpid()
        handle = self._handles.pop(path, None)
        if handle is None:
            handle = KSpaceFile(path)
        self._handles[path] = handle
        if len(self._handles) > MAX_OPEN_FILES:
            self._handles.popitem(last=False)[1].close()
        return handle

    def __getitem__(self, idx: int) -> Any:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} slices")
        file_idx, slice_idx = self._index[idx]
        path = self.files[file_idx]
        raw = self._file(path).read_slice(slice_idx)
        mask = raw["mask"]
        sample: dict[str, Any] = {
            Keys.KSPACE: kspace_to_tensor(raw["kspace"] * mask),
            Keys.MASK: torch.from_numpy(mask)[None, :, :, None],
        }
        if "target" in raw:
            sample[Keys.TARGET] = torch.from_numpy(raw["target"])
        if "segmentation" in raw:
            sample[Keys.SEG] = torch.from_numpy(raw["segmentation"].astype(np.int64))
        sample[Keys.FNAME] = path.name
        sample[Keys.SLICE] = slice_idx
        return self.transform(sample) if self.transform is not None else sample

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def close(self) -> None:
        """Close this process's open files (they reopen on the next access)."""
        while self._handles:
            self._handles.popitem()[1].close()
