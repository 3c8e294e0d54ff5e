"""Multi-coil k-space in fastMRI's HDF5 layout: a lazy, validating reader and an atomic writer.

Layout (DESIGN.md, "File formats"); every dataset but ``kspace`` is optional:

=======================  ==========================  ==================================================
dataset                  shape, dtype                 notes
=======================  ==========================  ==================================================
``kspace``               (S, C, H, W) complex         (S, H, W) is read as single-coil, C = 1
``mask``                 (W,), (1, W) or (H, W)       any real or bool dtype; nonzero = sampled
``target``               (S, Ht, Wt) real             medmtl's fully sampled magnitude image
``reconstruction_rss``   (S, Ht, Wt) real             fastMRI's target, used when ``target`` is absent
``segmentation``         (S, Hs, Ws) integer          label map, read as uint8
``ismrmrd_header``       bytes scalar                 the acquisition's XML header
=======================  ==========================  ==================================================

File attributes (``acceleration``, ``max``, ``norm``, ``classes`` as a JSON string, fastMRI's
``acquisition`` and ``patient_id``, ...) come back in ``KSpaceFile.attrs``.

The target may be smaller than k-space: fastMRI stores a 320 x 320 ``reconstruction_rss`` beside
640 x 368 k-space, because the readout is oversampled two-fold. It is returned as stored; consumers
centre-crop the image to the target's size.

Reading is lazy: opening a file reads its metadata and the stored mask (at most H x W values), and
``read_slice`` reads one slice through h5py's hyperslab selection, so a file larger than memory works.
Input files are opened read-only; the writer goes through ``atomic_path``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medmtl.errors import InputError, KSpaceFileError
from medmtl.io.atomic import atomic_path

KSPACE = "kspace"
MASK = "mask"
TARGET = "target"
RSS = "reconstruction_rss"
SEGMENTATION = "segmentation"
HEADER = "ismrmrd_header"
# Where a target image is looked for, first hit wins.
TARGET_KEYS = (TARGET, RSS)
SUFFIX = ".h5"


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _python_value(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (bytes decoded, numpy scalars and arrays unwrapped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return _python_value(value.item())
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def mask_problem(mask: np.ndarray, height: int, width: int) -> str | None:
    """Why ``mask`` cannot sample (height, width) k-space, or None when it can."""
    if mask.dtype.kind not in "biuf":
        return f"mask has dtype {mask.dtype}; expected real or bool"
    shapes = ((width,), (1, width), (height, width))
    if mask.ndim == 1 and mask.shape[0] != width:
        return f"mask has length {mask.shape[0]} but kspace has W = {width} columns"
    if mask.shape not in shapes:
        return (
            f"mask has shape {mask.shape}; expected (W,) = ({width},), (1, W) or (H, W) = ({height}, {width})"
        )
    if not np.isfinite(mask).all():
        return "mask contains NaN or Inf"
    if not mask.any():
        return "mask is all zeros (samples nothing)"
    return None


def _as_mask(stored: np.ndarray) -> np.ndarray:
    """A stored mask as (Hm, W) float32 of zeros and ones."""
    return (stored != 0).astype(np.float32).reshape(-1, stored.shape[-1])


def derive_mask(kspace_slice: np.ndarray) -> np.ndarray:
    """The column mask of one (C, H, W) slice: a column is unsampled where it is exactly zero everywhere.

    Returns (1, W) float32; all ones for fully sampled k-space. Only 1D (column) undersampling can be
    recognised this way, so 2D-undersampled files must store their ``mask``.
    """
    sampled = np.any(kspace_slice != 0, axis=(0, 1))
    return sampled.astype(np.float32)[None, :]


class KSpaceFile:
    """One k-space HDF5 file, opened read-only and validated on open. Use as a context manager.

    Attributes: ``path``, ``num_slices`` (S), ``num_coils`` (C), ``shape`` (H, W), ``attrs`` (dict),
    ``has_target``, ``has_segmentation``, ``target_shape`` ((Ht, Wt) or None).
    Any layout problem raises ``KSpaceFileError(path, what)``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = self._open()
        try:
            self._validate()
        except BaseException:
            self._file.close()
            raise

    def _error(self, what: str) -> KSpaceFileError:
        return KSpaceFileError(self.path, what)

    def _open(self) -> h5py.File:
        if self.path.is_dir():
            raise self._error("is a folder, not a k-space file")
        if not self.path.exists():
            raise self._error("no such file")
        try:
            if not h5py.is_hdf5(self.path):
                raise self._error("is not an HDF5 file")
            return h5py.File(self.path, "r")
        except OSError as err:
            raise self._error(f"cannot be opened as HDF5, truncated or corrupt ({_first_line(err)})") from err

    def _dataset(self, name: str) -> h5py.Dataset | None:
        node = self._file.get(name)
        if node is not None and not isinstance(node, h5py.Dataset):
            raise self._error(f"`{name}` is a {type(node).__name__}, not a dataset")
        return node

    def _validate(self) -> None:
        kspace = self._dataset(KSPACE)
        if kspace is None:
            keys = ", ".join(sorted(self._file.keys())) or "none"
            raise self._error(f"has no `{KSPACE}` dataset (datasets: {keys})")
        if kspace.ndim not in (3, 4):
            raise self._error(
                f"kspace has {kspace.ndim} dimensions, shape {kspace.shape}; "
                "expected 4 (slices, coils, H, W) or 3 (slices, H, W) for single-coil"
            )
        if kspace.dtype.kind != "c":
            raise self._error(f"kspace has dtype {kspace.dtype}; expected complex (complex64)")
        if 0 in kspace.shape:
            raise self._error(f"kspace has an empty dimension, shape {kspace.shape}")
        self._kspace = kspace
        self.num_slices = int(kspace.shape[0])
        self.num_coils = 1 if kspace.ndim == 3 else int(kspace.shape[1])
        self.shape = (int(kspace.shape[-2]), int(kspace.shape[-1]))
        self.attrs = {key: _python_value(value) for key, value in self._file.attrs.items()}

        self._target = next((ds for key in TARGET_KEYS if (ds := self._dataset(key)) is not None), None)
        self._check_per_slice(self._target, "fiu")
        self._segmentation = self._dataset(SEGMENTATION)
        self._check_per_slice(self._segmentation, "biu")
        self.has_target = self._target is not None
        self.has_segmentation = self._segmentation is not None
        self.target_shape = tuple(int(n) for n in self._target.shape[1:]) if self.has_target else None

        self._mask = None
        stored = self._dataset(MASK)
        if stored is not None:
            stored = self._read(stored, (), f"`{MASK}`")
            problem = mask_problem(stored, *self.shape)
            if problem:
                raise self._error(problem)
            self._mask = _as_mask(stored)

    def _check_per_slice(self, ds: h5py.Dataset | None, kinds: str) -> None:
        """A target or segmentation must be (S, h, w) with a dtype of one of ``kinds``."""
        if ds is None:
            return
        name = ds.name.lstrip("/")
        if ds.ndim != 3 or ds.shape[0] != self.num_slices or 0 in ds.shape:
            raise self._error(f"`{name}` has shape {ds.shape}; expected ({self.num_slices}, h, w)")
        if ds.dtype.kind not in kinds:
            raise self._error(f"`{name}` has dtype {ds.dtype}")

    def _read(self, ds: h5py.Dataset, index: Any, what: str) -> np.ndarray:
        try:
            return np.asarray(ds[index])
        except (OSError, RuntimeError) as err:
            raise self._error(f"{what} cannot be read ({_first_line(err)})") from err

    def mask(self) -> np.ndarray:
        """The sampling mask, (Hm, W) float32 of zeros and ones, Hm = 1 for a column mask.

        The stored ``mask`` when there is one (even if k-space is zero elsewhere too); otherwise derived
        from the middle slice (``derive_mask``): all ones for fully sampled k-space.
        """
        if self._mask is None:
            middle = self.num_slices // 2
            derived = derive_mask(self._read_kspace(middle))
            if not derived.any():
                raise self._error(f"kspace slice {middle} is all zeros, so no mask can be derived")
            self._mask = derived
        return self._mask.copy()

    def _read_kspace(self, i: int) -> np.ndarray:
        kspace = self._read(self._kspace, i, f"kspace slice {i}").astype(np.complex64, copy=False)
        return kspace[None] if kspace.ndim == 2 else kspace

    def read_slice(self, i: int) -> dict[str, np.ndarray]:
        """Slice ``i`` as numpy arrays, reading only that slice.

        Returns {"kspace": (C, H, W) complex64 as stored (not masked), "mask": (Hm, W) float32,
        "target": (Ht, Wt) float32 if present, "segmentation": (Hs, Ws) uint8 if present}.
        Raises ``KSpaceFileError`` if the slice's k-space holds NaN or Inf.
        """
        if not 0 <= i < self.num_slices:
            raise IndexError(f"{self.path}: slice {i} out of range (file has {self.num_slices})")
        kspace = self._read_kspace(i)
        if not np.isfinite(kspace).all():
            bad = "NaN" if np.isnan(kspace).any() else "Inf"
            raise self._error(f"kspace slice {i} contains {bad}")
        sample = {"kspace": kspace, "mask": self.mask()}
        if self._target is not None:
            sample["target"] = self._read(self._target, i, f"target slice {i}").astype(np.float32)
        if self._segmentation is not None:
            seg = self._read(self._segmentation, i, f"segmentation slice {i}")
            sample["segmentation"] = seg.astype(np.uint8)
        return sample

    @property
    def ismrmrd_header(self) -> bytes | None:
        """The stored XML acquisition header, or None."""
        ds = self._dataset(HEADER)
        if ds is None:
            return None
        value = self._read(ds, (), f"`{HEADER}`")
        return value.item() if value.dtype.kind in "SO" else value.tobytes()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> KSpaceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.num_slices

    def __repr__(self) -> str:
        return f"KSpaceFile({str(self.path)!r}, slices={self.num_slices}, coils={self.num_coils}, shape={self.shape})"


def validate_kspace_file(path: str | os.PathLike) -> None:
    """Check the whole file: the layout, the mask, and that every slice of k-space is finite.

    Reads one slice at a time. Raises ``KSpaceFileError`` naming the file and the problem.
    """
    with KSpaceFile(path) as f:
        f.mask()
        for i in range(f.num_slices):
            f.read_slice(i)


def expand_kspace_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """A file, a folder (its ``*.h5`` files, sorted) or a list of either -> a list of file paths.

    Files are returned as given, whatever their suffix; ``KSpaceFile`` checks their content.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise InputError("paths", "no k-space files or folders given")
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.glob(f"*{SUFFIX}") if p.is_file())
            if not found:
                raise KSpaceFileError(item, f"folder holds no *{SUFFIX} files")
            files.extend(found)
        elif item.exists():
            files.append(item)
        else:
            raise KSpaceFileError(item, "no such file or folder")
    return files


def _check_per_slice_array(name: str, array: np.ndarray, num_slices: int, kinds: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[0] != num_slices or 0 in array.shape:
        raise InputError(name, f"shape {array.shape}; expected ({num_slices}, h, w)")
    if array.dtype.kind not in kinds:
        raise InputError(name, f"dtype {array.dtype} is not allowed")
    return array


def _check_attr(key: str, value: Any) -> None:
    if not isinstance(value, (str, bytes, int, float, bool, np.generic, np.ndarray)):
        raise InputError(f"attrs[{key!r}]", f"cannot store a {type(value).__name__}; use a JSON string")


def write_kspace_h5(
    path: str | os.PathLike,
    kspace: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    target: np.ndarray | None = None,
    segmentation: np.ndarray | None = None,
    reconstruction_rss: np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
    ismrmrd_header: bytes | str | None = None,
) -> Path:
    """Write one k-space file in the layout above, atomically. Returns ``path``.

    ``kspace``: (S, C, H, W) complex, stored as complex64, one HDF5 chunk per slice so that a slice is
    one read. ``mask``: (W,), (1, W) or (H, W), stored as float32 zeros and ones. ``target`` and
    ``reconstruction_rss``: (S, Ht, Wt) real, stored as float32. ``segmentation``: (S, Hs, Ws) integer
    labels 0..255, stored as uint8. ``attrs``: file attributes (str, numbers, numpy arrays; lists go in
    as JSON strings). Everything is checked before the file is created; a problem raises ``InputError``.
    """
    kspace = np.asarray(kspace)
    if kspace.ndim != 4 or kspace.dtype.kind != "c" or 0 in kspace.shape:
        raise InputError(
            "kspace", f"shape {kspace.shape}, dtype {kspace.dtype}; expected (S, C, H, W) complex"
        )
    if not np.isfinite(kspace).all():
        raise InputError("kspace", "contains NaN or Inf")
    num_slices, _, height, width = kspace.shape
    datasets: dict[str, np.ndarray] = {KSPACE: kspace.astype(np.complex64, copy=False)}
    if mask is not None:
        mask = np.asarray(mask)
        problem = mask_problem(mask, height, width)
        if problem:
            raise InputError("mask", problem)
        datasets[MASK] = (mask != 0).astype(np.float32)
    for name, image in ((TARGET, target), (RSS, reconstruction_rss)):
        if image is not None:
            datasets[name] = _check_per_slice_array(name, image, num_slices, "fiu").astype(np.float32)
    if segmentation is not None:
        seg = _check_per_slice_array(SEGMENTATION, segmentation, num_slices, "biu")
        if seg.min() < 0 or seg.max() > 255:
            raise InputError(SEGMENTATION, f"labels span {seg.min()}..{seg.max()}; expected 0..255")
        datasets[SEGMENTATION] = seg.astype(np.uint8)
    attrs = dict(attrs or {})
    for key, value in attrs.items():
        _check_attr(key, value)
    if isinstance(ismrmrd_header, str):
        ismrmrd_header = ismrmrd_header.encode("utf-8")

    dest = Path(path)
    with atomic_path(dest) as tmp, h5py.File(tmp, "w") as f:
        for name, array in datasets.items():
            per_slice = array.ndim >= 3 and name != MASK
            f.create_dataset(name, data=array, chunks=(1, *array.shape[1:]) if per_slice else None)
        if ismrmrd_header is not None:
            f.create_dataset(HEADER, data=np.bytes_(ismrmrd_header))
        f.attrs.update(attrs)
    return dest
