"""Lesion volumes from NIfTI: an image, an instance-label image and a tag file, one case at a time or as a
folder in nnDetection's raw-data layout.

One case (``read_lesion_nifti``):

- image: a 3D NIfTI (``.nii`` or ``.nii.gz``; a 4D file holding one volume, (I, J, K, 1), is read as 3D) of
  real numbers. ``scl_slope`` and ``scl_inter`` are applied, so CT comes out in HU.
- labels: a NIfTI of the same shape and geometry; 0 = background, n > 0 = instance n. An integer dtype, or
  floats holding whole numbers. Label values need not be consecutive: instances are numbered 1..N in
  ascending order of their value, and ``meta["label_ids"]`` keeps the file's values.
- tags: a tag file (``lesion_tags``, section ``"instances"``, keyed by the labels' values).

A folder (``LesionNiftiIndex``)::

    <root>/images<split>/<case>.nii.gz   the image; names may carry nnDetection's channel suffix,
                                         <case>_0000.nii.gz, when every name does (one channel only)
    <root>/labels<split>/<case>.nii.gz   instance labels; without this folder cases have no lesions
    <root>/labels<split>/<case>.json     tags, optional per case; all tag files share one `tag_names`

``.nii`` works wherever ``.nii.gz`` does; ``split`` is ``"Tr"`` or ``"Ts"`` as in nnDetection.

Per lesion: ``box`` is the instance's half-open voxel box; ``key_slice`` the slice (axis k) where it has
the most voxels (the first of equals); the long and short axis are ``measure_recist`` of its pixels on that
slice. ``spacing`` is the header's voxel size (zooms), ``affine`` the file's, as nibabel reads it.

Bounds: shape and dtype come from the header and are checked (``MAX_VOXELS``) before any data is read, and
the data is read in chunks, so a file that declares more than it holds fails without allocating it.
Every problem raises ``InputError`` naming the file.
"""

from __future__ import annotations

import math
import os
import re
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import Opener
from nibabel.spatialimages import HeaderDataError
from scipy import ndimage

from medmtl.data.lesion_geometry import measure_recist
from medmtl.data.lesion_record import Lesion, LesionVolume
from medmtl.data.lesion_tags import TAG_NAMES_KEY, read_tags_json
from medmtl.errors import InputError, MedmtlError

SUFFIXES = (".nii.gz", ".nii")
TAGS_SUFFIX = ".json"
# Largest volume read: 2**28 voxels, a 512 x 512 x 1024 CT (1 GiB as float32).
MAX_VOXELS = 1 << 28
MAX_LABEL = 65535
# Image and labels must share their affine to this tolerance (both are stored as float32).
AFFINE_RTOL, AFFINE_ATOL_MM = 1e-4, 1e-3
_READ_CHUNK = 16 << 20
_CHANNEL = re.compile(r"(.+)_([0-9]{4})")
# What nibabel, gzip and zlib raise for a damaged file.
_NIFTI_ERRORS = (OSError, EOFError, ValueError, zlib.error, struct.error, HeaderDataError)
# Header classes by their sizeof_hdr field.
_HEADER_CLASSES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}


def _first_line(err: BaseException) -> str:
    return (str(err).strip() or type(err).__name__).splitlines()[0][:200]


def _stem(name: str) -> str | None:
    """A NIfTI file name without its suffix, or None for other files."""
    suffix = next((s for s in SUFFIXES if name.endswith(s)), None)
    return name[: -len(suffix)] if suffix and len(name) > len(suffix) else None


@dataclass(frozen=True)
class _Header:
    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    offset: int
    slope: float
    inter: float
    spacing: np.ndarray
    affine: np.ndarray


def _parse_header(path: Path, head: bytes) -> _Header:
    """The header at the start of ``head``; nibabel parses it, but no extension or data is read here."""
    sizes = (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big"))
    klass = next((_HEADER_CLASSES[n] for n in sizes if n in _HEADER_CLASSES), None)
    if klass is None:
        raise InputError(path, "is not a NIfTI file (it does not start with a NIfTI-1 or NIfTI-2 header)")
    length = klass.template_dtype.itemsize
    if len(head) < length:
        raise InputError(path, f"is truncated: holds {len(head)} of its {length} header bytes")
    # nibabel fixes what it can on load (zero voxel sizes become 1); the file's own values decide here.
    stored, fixed = klass(head[:length], check=False), klass(head[:length])
    if fixed["magic"].item() != klass.single_magic:
        raise InputError(path, "is the header of a .hdr/.img pair, not a single-file .nii")
    slope, inter = fixed.get_slope_inter()
    with np.errstate(invalid="ignore", over="ignore"):  # NaN or huge voxel sizes are refused by the caller
        affine = np.asarray(fixed.get_best_affine(), np.float64)
    return _Header(
        path,
        tuple(int(n) for n in fixed.get_data_shape()),
        np.dtype(fixed.get_data_dtype()),
        int(fixed.get_data_offset()),
        1.0 if slope is None else float(slope),
        0.0 if inter is None else float(inter),
        np.array(stored["pixdim"][1:4], np.float64),
        affine,
    )


def _read_header(path: Path) -> _Header:
    if path.is_dir():
        raise InputError(path, "is a folder, not a NIfTI file")
    if not path.exists():
        raise InputError(path, "no such file")
    try:
        with Opener(str(path)) as stream:
            head = stream.read(max(klass.template_dtype.itemsize for klass in _HEADER_CLASSES.values()))
        header = _parse_header(path, head)
    except MedmtlError:
        raise
    except _NIFTI_ERRORS as err:
        raise InputError(
            path, f"is not a readable NIfTI file, truncated or corrupt ({_first_line(err)})"
        ) from err
    shape = header.shape
    volume = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if len(volume) != 3:
        raise InputError(path, f"is {len(shape)}D, shape {shape}; expected a 3D volume (I, J, K)")
    if min(volume) < 1:
        raise InputError(path, f"has an empty dimension, shape {shape}")
    if math.prod(volume) > MAX_VOXELS:
        raise InputError(
            path, f"declares {math.prod(volume)} voxels, shape {shape}, above the limit of {MAX_VOXELS}"
        )
    if header.dtype.kind not in "biuf" or header.dtype.fields is not None:
        raise InputError(path, f"holds {header.dtype} data; expected real numbers")
    if not (np.isfinite(header.spacing).all() and (header.spacing != 0).all()):
        raise InputError(
            path,
            f"has voxel size {header.spacing.tolist()} mm in its header; expected three finite, non-zero sizes",
        )
    if not np.isfinite(header.affine).all() or abs(np.linalg.det(header.affine[:3, :3])) < 1e-12:
        raise InputError(path, "has an affine with NaN, Inf or no volume (its sform/qform are broken)")
    if not (math.isfinite(header.slope) and math.isfinite(header.inter)) or header.offset < 0:
        raise InputError(path, "has a broken header (data offset, scl_slope or scl_inter)")
    # Negative sizes are read as their magnitude, as nibabel does.
    return replace(header, shape=volume, spacing=np.abs(header.spacing))


def _read_data(header: _Header) -> np.ndarray:
    """The stored values, unscaled, shape ``header.shape``; reads in chunks and never more than declared."""
    path, count = header.path, math.prod(header.shape) * header.dtype.itemsize
    if not path.name.endswith(".gz") and path.stat().st_size < header.offset + count:
        held = max(path.stat().st_size - header.offset, 0)
        raise InputError(path, f"is truncated: holds {held} of the {count} data bytes its header declares")
    buffer = bytearray()
    try:
        with Opener(str(path)) as stream:
            stream.seek(header.offset)
            while len(buffer) < count:
                chunk = stream.read(min(_READ_CHUNK, count - len(buffer)))
                if not chunk:
                    break
                buffer += chunk
    except _NIFTI_ERRORS as err:
        raise InputError(path, f"cannot be read, truncated or corrupt ({_first_line(err)})") from err
    if len(buffer) < count:
        raise InputError(
            path, f"is truncated: holds {len(buffer)} of the {count} data bytes its header declares"
        )
    return np.frombuffer(buffer, header.dtype).reshape(header.shape, order="F")


def _read_image(header: _Header) -> np.ndarray:
    image = _read_data(header).astype(np.float32)
    if (header.slope, header.inter) != (1.0, 0.0):
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported as Inf just below
            image = image * np.float32(header.slope) + np.float32(header.inter)
    if not np.isfinite(image).all():
        raise InputError(header.path, "holds NaN or Inf voxels")
    return image


def _read_labels(header: _Header) -> np.ndarray:
    """Label values as (I, J, K) int32, checked: whole numbers in 0..MAX_LABEL."""
    values = _read_data(header)
    if (header.slope, header.inter) != (1.0, 0.0):
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported as a bad label below
            values = values * header.slope + header.inter
    if values.dtype.kind == "f":
        bad = values[~np.isfinite(values) | (values != np.round(values))]
        if bad.size:
            raise InputError(
                header.path, f"holds non-integer labels (e.g. {bad.flat[0]:g}); expected 0, 1, 2, ..."
            )
    low, high = values.min(), values.max()
    if low < 0 or high > MAX_LABEL:
        raise InputError(
            header.path, f"holds labels {low:g}..{high:g}; expected 0 (background) to {MAX_LABEL}"
        )
    return values.astype(np.int32)


def _instances(values: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, list[int], list[Lesion]]:
    """Instance labels 1..N, the label values they come from, and their lesions (untagged).

    values: (I, J, K) int32 label values. Box, key slice and RECIST axes as in the module doc.
    """
    objects = ndimage.find_objects(values)  # one entry per value up to the largest, None where absent
    ids = [value for value, where in enumerate(objects, 1) if where is not None]
    lesions = []
    for value in ids:
        where = objects[value - 1]
        crop = values[where] == value
        k = int(np.argmax(crop.sum(axis=(0, 1))))
        long_mm, short_mm, recist = measure_recist(crop[:, :, k], spacing[:2])
        start = np.array([s.start for s in where], np.float64)
        stop = np.array([s.stop for s in where], np.float64)
        lesions.append(
            Lesion(
                box=np.concatenate([start, stop]),
                key_slice=int(start[2]) + k,
                long_axis_mm=long_mm,
                short_axis_mm=short_mm,
                recist=recist + start[:2],
            )
        )
    if ids == list(range(1, len(ids) + 1)):
        return values, ids, lesions
    lookup = np.zeros(ids[-1] + 1, np.int32)
    lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return np.take(lookup, values), ids, lesions


@dataclass(frozen=True)
class _Tags:
    """A case's tag file as read: the vocabulary, the tag and uncertain tag ids by label value, and the file
    (for messages)."""

    names: tuple[str, ...] = ()
    by_label: dict[int, tuple[int, ...]] = field(default_factory=dict)
    uncertain: dict[int, tuple[int, ...]] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def read(cls, path: str | os.PathLike) -> _Tags:
        return cls(*read_tags_json(path, "instances"), Path(path))


def _read_case(image_path: Path, labels_path: Path | None, tags: _Tags, name: str) -> LesionVolume:
    header = _read_header(image_path)
    image = _read_image(header)
    instances = np.zeros(image.shape, np.int32)
    ids: list[int] = []
    lesions: list[Lesion] = []
    if labels_path is not None:
        label_header = _read_header(labels_path)
        if label_header.shape != header.shape:
            raise InputError(
                labels_path, f"has shape {label_header.shape}, but image {image_path} has {header.shape}"
            )
        if not np.allclose(label_header.affine, header.affine, rtol=AFFINE_RTOL, atol=AFFINE_ATOL_MM):
            raise InputError(
                labels_path, f"has another affine (voxel-to-patient geometry) than image {image_path}"
            )
        instances, ids, lesions = _instances(_read_labels(label_header), header.spacing)
    unknown = sorted((set(tags.by_label) | set(tags.uncertain)) - set(ids))
    if unknown:
        held = ", ".join(map(str, ids[:20])) + (", ..." if len(ids) > 20 else "") or "none"
        raise InputError(
            tags.path, f"names instance {unknown[0]}, which {labels_path} does not hold (instances: {held})"
        )
    lesions = [
        replace(lesion, tags=tags.by_label.get(i, ()), uncertain_tags=tags.uncertain.get(i, ()))
        for lesion, i in zip(lesions, ids)
    ]
    return LesionVolume(
        image=image,
        spacing=header.spacing,
        affine=header.affine,
        instances=instances,
        lesions=tuple(lesions),
        tag_names=tags.names,
        name=name,
        meta={"label_ids": tuple(ids)},
    )


def _case_name(path: Path) -> str:
    stem = _stem(path.name) or path.name
    match = _CHANNEL.fullmatch(stem)
    return match.group(1) if match and match.group(2) == "0000" else stem


def read_lesion_nifti(
    image: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    tags_json: str | os.PathLike | None = None,
    *,
    name: str | None = None,
) -> LesionVolume:
    """One case: an image, optionally its instance labels, optionally their tags (see the module doc).

    ``name`` defaults to the image's file name without suffix (and without a ``_0000`` channel suffix).
    Without labels the volume has no lesions.
    """
    if tags_json is not None and labels is None:
        raise InputError(tags_json, "is given without a labels file, so it has no instances to tag")
    tags = _Tags.read(tags_json) if tags_json is not None else _Tags()
    labels_path = Path(labels) if labels is not None else None
    return _read_case(Path(image), labels_path, tags, name or _case_name(Path(image)))


@dataclass(frozen=True)
class _Case:
    name: str
    image: Path
    labels: Path | None
    tags: _Tags


def _nifti_files(folder: Path) -> dict[str, Path]:
    """{stem: path} of the NIfTI files in ``folder``; a stem stored as both .nii and .nii.gz is refused."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem = _stem(path.name)
        if stem is None or not path.is_file():
            continue
        if stem in files:
            raise InputError(path, f"is a second file of {stem!r} beside {files[stem].name}")
        files[stem] = path
    return files


class LesionNiftiIndex:
    """The cases of a folder in the layout above, read one at a time (a map-style dataset of ``LesionVolume``).

    Files are listed and the tag files read and checked here (every case must have an image, labels when
    the labels folder exists, and tag files must agree on ``tag_names``); volumes are read by ``index[i]``.
    Attributes: ``names`` (case names, sorted), ``tag_names``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "Tr"):
        self.root = Path(root)
        images_dir, labels_dir = self.root / f"images{split}", self.root / f"labels{split}"
        if not images_dir.is_dir():
            raise InputError(images_dir, f"no such folder (the layout is <root>/images{split}/<case>.nii.gz)")
        images = _nifti_files(images_dir)
        if not images:
            raise InputError(images_dir, "holds no .nii or .nii.gz files")
        matches = {stem: _CHANNEL.fullmatch(stem) for stem in images}
        if all(matches.values()) and any(m.group(2) == "0000" for m in matches.values()):
            other = next((images[s] for s, m in matches.items() if m.group(2) != "0000"), None)
            if other is not None:
                raise InputError(
                    other, "is a second channel (names end in _0000 for channel 0); medmtl reads one"
                )
            images = {m.group(1): images[stem] for stem, m in matches.items()}
        labels = _nifti_files(labels_dir) if labels_dir.is_dir() else None
        jsons = (
            {p.name[: -len(TAGS_SUFFIX)]: p for p in sorted(labels_dir.glob(f"*{TAGS_SUFFIX}"))}
            if labels is not None
            else {}
        )
        for stem, path in {**(labels or {}), **jsons}.items():
            if stem not in images:
                raise InputError(path, f"has no image: {images_dir} holds no case {stem!r}")
        self.tag_names: tuple[str, ...] = ()
        first_tags: Path | None = None
        self._cases = []
        for case, image in images.items():
            if labels is not None and case not in labels:
                raise InputError(
                    labels_dir / f"{case}.nii.gz",
                    f"no such file (labels{split}/ exists, so every case needs labels)",
                )
            tags = _Tags.read(jsons[case]) if case in jsons else _Tags()
            if tags.path is not None:
                if first_tags is None:
                    self.tag_names, first_tags = tags.names, tags.path
                elif tags.names != self.tag_names:
                    raise InputError(jsons[case], f"has other `{TAG_NAMES_KEY}` than {first_tags}")
            self._cases.append(_Case(case, image, labels[case] if labels is not None else None, tags))
        self.names = tuple(case.name for case in self._cases)

    def __len__(self) -> int:
        return len(self._cases)

    def __getitem__(self, index: int) -> LesionVolume:
        """Case ``index``, reading its files; raises IndexError past the end."""
        case = self._cases[index]
        volume = _read_case(case.image, case.labels, case.tags, case.name)
        return replace(volume, tag_names=self.tag_names)
