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

Sizes in a file are not trusted: a dataset must store all the data its shape declares (a few-KiB file can
declare terabytes of never-written chunks, which HDF5 would hand back as fill values), virtual and external
datasets are refused, and no single read (a slice, the mask, the header, an attribute) may return more than
``MAX_READ_BYTES``. A damaged file raises ``KSpaceFileError``, whatever h5py raised underneath.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medmtl.errors import InputError, KSpaceFileError, MedmtlError
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
# The most bytes one read may return, checked against the declared shape before anything is allocated.
# 2 GiB holds four 64-coil 1024 x 1024 complex64 slices; fastMRI's largest slices are about 50 MB.
MAX_READ_BYTES = 2**31
# What h5py raises for damaged metadata (HDF5's error stack mapped onto these types).
_H5PY_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


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


def _mask_layout_problem(shape: tuple[int, ...], dtype: np.dtype, height: int, width: int) -> str | None:
    """Why a mask of this shape and dtype cannot sample (height, width) k-space, or None; needs no values."""
    if dtype.kind not in "biuf":
        return f"mask has dtype {dtype}; expected real or bool"
    shapes = ((width,), (1, width), (height, width))
    if len(shape) == 1 and shape[0] != width:
        return f"mask has length {shape[0]} but kspace has W = {width} columns"
    if shape not in shapes:
        return f"mask has shape {shape}; expected (W,) = ({width},), (1, W) or (H, W) = ({height}, {width})"
    return None


def mask_problem(mask: np.ndarray, height: int, width: int) -> str | None:
    """Why ``mask`` cannot sample (height, width) k-space, or None when it can."""
    problem = _mask_layout_problem(mask.shape, mask.dtype, height, width)
    if problem:
        return problem
    if not np.isfinite(mask).all():
        return "mask contains NaN or Inf"
    if not mask.any():
        return "mask is all zeros (samples nothing)"
    return None


def _as_mask(stored: np.ndarray) -> np.ndarray:
    """A stored mask as (Hm, W) float32 of zeros and ones."""
    return (stored != 0).astype(np.float32).reshape(-1, stored.shape[-1])


def _unstored_problem(ds: h5py.Dataset) -> str | None:
    """Why ``ds`` holds less data than its shape declares, or None (cheap: reads the chunk index only)."""
    plist = ds.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL or plist.get_external_count():
        return "keeps its data in other files (a virtual or external dataset), which medmtl does not read"
    if layout == h5py.h5d.CHUNKED:
        needed = math.prod(-(-n // c) for n, c in zip(ds.shape, ds.chunks))
        stored, unit = ds.id.get_num_chunks(), "chunks"
    elif layout == h5py.h5d.CONTIGUOUS:
        # The file's element size, which can differ from numpy's (24-bit integers, variable-length strings).
        needed, stored, unit = ds.size * ds.id.get_type().get_size(), ds.id.get_storage_size(), "bytes"
    else:  # compact: the data sits in the object header
        return None
    if stored < needed:
        return (
            f"stores {stored} of the {needed} {unit} its shape {ds.shape} declares (not completely written)"
        )
    return None


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
    Any layout problem or damage raises ``KSpaceFileError(path, what)``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = self._open()
        try:
            self._validate()
        except MedmtlError:
            self._file.close()
            raise
        except _H5PY_ERRORS as err:
            self._file.close()
            raise self._error(f"is damaged: its HDF5 metadata cannot be read ({_first_line(err)})") from err
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
        except _H5PY_ERRORS as err:
            raise self._error(f"cannot be opened as HDF5, truncated or corrupt ({_first_line(err)})") from err

    def _dataset(self, name: str) -> h5py.Dataset | None:
        """The dataset ``name``, None if absent; refused if it is not a dataset or does not hold its data."""
        node = self._file.get(name)
        if node is None:
            return None
        if not isinstance(node, h5py.Dataset):
            raise self._error(f"`{name}` is a {type(node).__name__}, not a dataset")
        if node.shape is None:
            raise self._error(f"`{name}` is an empty (null) dataset")
        problem = _unstored_problem(node)
        if problem:
            raise self._error(f"`{name}` {problem}")
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
        self.attrs = self._read_attrs()

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
            problem = _mask_layout_problem(stored.shape, stored.dtype, *self.shape)
            if problem:
                raise self._error(problem)
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

    def _read_attrs(self) -> dict[str, Any]:
        attrs = {}
        for key in self._file.attrs:
            attr = self._file.attrs.get_id(key)
            self._check_read_size(f"attribute {key!r}", math.prod(attr.shape or ()), attr.dtype)
            attrs[key] = _python_value(self._file.attrs[key])
        return attrs

    def _check_read_size(self, what: str, count: int, dtype: np.dtype) -> None:
        size = count * dtype.itemsize
        if size > MAX_READ_BYTES:
            raise self._error(f"{what} declares {size} bytes, above the read limit of {MAX_READ_BYTES}")

    def _read(self, ds: h5py.Dataset, index: int | tuple[()], what: str) -> np.ndarray:
        """``ds[index]`` for index ``()`` (all of it) or an int (one slice along the first axis)."""
        self._check_read_size(what, math.prod(ds.shape if index == () else ds.shape[1:]), ds.dtype)
        try:
            return np.asarray(ds[index])
        except _H5PY_ERRORS as err:
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
        Raises ``KSpaceFileError`` if the slice's k-space or target holds NaN or Inf, or its labels fall
        outside 0..255.
        """
        if not 0 <= i < self.num_slices:
            raise IndexError(f"{self.path}: slice {i} out of range (file has {self.num_slices})")
        kspace = self._read_kspace(i)
        if not np.isfinite(kspace).all():
            bad = "NaN" if np.isnan(kspace).any() else "Inf"
            raise self._error(f"kspace slice {i} contains {bad}")
        sample = {"kspace": kspace, "mask": self.mask()}
        if self._target is not None:
            target = self._read(self._target, i, f"target slice {i}").astype(np.float32)
            if not np.isfinite(target).all():
                raise self._error(f"target slice {i} contains NaN or Inf")
            sample["target"] = target
        if self._segmentation is not None:
            seg = self._read(self._segmentation, i, f"segmentation slice {i}")
            if seg.min() < 0 or seg.max() > 255:
                raise self._error(
                    f"segmentation slice {i} has labels {seg.min()}..{seg.max()}; expected 0..255"
                )
            sample["segmentation"] = seg.astype(np.uint8)
        return sample

    @property
    def ismrmrd_header(self) -> bytes | None:
        """The stored XML acquisition header, or None."""
        try:
            ds = self._dataset(HEADER)
        except _H5PY_ERRORS as err:
            if isinstance(err, MedmtlError):
                raise
            raise self._error(f"`{HEADER}` cannot be read ({_first_line(err)})") from err
        if ds is None:
            return None
        value = self._read(ds, (), f"`{HEADER}`")
        if value.dtype.kind not in "SO":
            return value.tobytes()
        text = value.item() if value.size == 1 else None
        if isinstance(text, str):
            text = text.encode("utf-8")
        if not isinstance(text, bytes):
            raise self._error(f"`{HEADER}` has shape {value.shape}, dtype {value.dtype}; expected one string")
        return text

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
