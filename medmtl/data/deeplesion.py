"""DeepLesion in its released layout: an index over ``DL_info.csv`` and a lazy, bounded volume reader.

Layout (``data_cards/DeepLesion.md``)::

    <root>/DL_info.csv                           one row per lesion (columns: ``deeplesion_csv``)
    <root>/Images_png/<series>/<slice:03d>.png   16-bit grayscale, HU + 32768; <series> = <patient>_<study>_<series>

The rows of one series with the same ``Slice_range`` make one ``LesionVolume`` named
``<series>_<first:03d>-<last:03d>``: a series can store several disjoint ranges, and one range can hold
several key slices and several lesions per key slice. The volume holds the range's slices, or with
``context_mm`` only those within that distance of a key slice. ``meta["first_slice"]`` is the slice number
(the PNG's name) of k = 0.

Axes: ``image[i, j, k]`` is pixel (row j, column i) of PNG ``first_slice + k``, so i runs along the PNG's
columns (DL_info's x) and j along its rows (y), the way nibabel loads a NIfTI converted from the same
axial DICOM series. The affine is nominal: DeepLesion stores neither position nor orientation, so it is
``diag(-x, -y, z)`` spacing, which puts the usual axial DICOM display (columns towards the patient's left,
rows towards the back) into RAS+, with the origin at voxel 0. Patient positions relative to the volume's
centre (``medmtl.data.lesion_dataset.patient_frame``) are therefore right in-plane (left-right and front-back
of the field of view's centre) but along z only relative to the slices read, which are a range around the key
slices, not the whole scan.

Per lesion: the box from ``Bounding_boxes`` (clipped to the slice) on its key slice, the RECIST end points
as measured, the diameters in mm from those end points, and a weak instance mask on the key slice only:
the ellipse through the four end points (``recist_ellipse_mask``). Where weak masks overlap, the smaller
lesion keeps the shared pixels. ``meta`` holds ``split``, ``age`` and ``sex`` where known, ``series``,
``first_slice``, and per lesion (in instance order) ``rows`` (the 0-based DL_info row, which tag files
use), ``windows`` (DICOM window, HU), ``coarse_types`` (``COARSE_TYPES``, -1 = unlabelled),
``possibly_noisy`` and ``locations`` (Normalized_lesion_location).

Bounds: every size comes from the CSV and is checked before anything is read (``MAX_IMAGE_SIDE``,
``MAX_SLICES``, ``MAX_VOLUME_BYTES``); a PNG's header must match ``Image_size`` before it is decoded.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medmtl.data.deeplesion_csv import SPLITS, LesionRow, read_dl_info
from medmtl.data.lesion_geometry import recist_diameters_mm, recist_ellipse_mask
from medmtl.data.lesion_record import Lesion, LesionVolume
from medmtl.data.lesion_tags import read_tags_json
from medmtl.errors import ConfigError, InputError, MedmtlError

CSV_NAME = "DL_info.csv"
IMAGES_DIR = "Images_png"
HU_OFFSET = 32768
# Largest volume read, as float32: 1024 slices of 512 x 512.
MAX_VOLUME_BYTES = 1 << 30
# Largest PNG read: a 16-bit slice of MAX_IMAGE_SIDE squared stored without compression is 32 MiB.
MAX_PNG_BYTES = 64 << 20
# Boxes may reach this far past the slice's edge (the release pads the RECIST end points by 5 pixels).
BOX_MARGIN_PX = 5.0
# What Pillow raises for a damaged PNG.
_PNG_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)
_MODE_WORDS = {"1": "1-bit", "L": "8-bit grayscale", "P": "8-bit palette", "LA": "grayscale + alpha"}
# Row fields every lesion of one volume shares, with their DL_info column.
_SHARED = {
    "spacing": "Spacing_mm_px_",
    "image_size": "Image_size",
    "sex": "Patient_gender",
    "age": "Patient_age",
    "split": "Train_Val_Test",
}


def _first_line(err: BaseException) -> str:
    return (str(err).strip() or type(err).__name__).splitlines()[0][:200]


def read_slice_png(path: Path, image_size: tuple[int, int], line: int) -> np.ndarray:
    """One DeepLesion PNG in HU, (columns, rows) float32; ``image_size`` and ``line`` come from DL_info."""
    try:
        size = path.stat().st_size
        if size > MAX_PNG_BYTES:
            raise InputError(path, f"is {size} bytes, above the limit of {MAX_PNG_BYTES} for one slice")
        # Pillow reads chunks by their stated length; from memory, a damaged length cannot make it allocate
        # more than the file holds.
        with Image.open(io.BytesIO(path.read_bytes()), formats=["PNG"]) as png:
            if png.mode != "I;16":
                words = _MODE_WORDS.get(png.mode, f"mode {png.mode}")
                raise InputError(
                    path, f"is a {words} PNG; DeepLesion slices are 16-bit grayscale (HU + {HU_OFFSET})"
                )
            if png.size not in (image_size, image_size[::-1]):
                raise InputError(
                    path,
                    f"is {png.size[0]} x {png.size[1]} pixels, but line {line} of {CSV_NAME} gives "
                    f"`Image_size` {image_size[0]}, {image_size[1]}",
                )
            png.load()
            pixels = np.asarray(png)
    except MedmtlError:
        raise
    except FileNotFoundError as err:
        raise InputError(path, f"no such file (line {line} of {CSV_NAME} needs it)") from err
    except _PNG_ERRORS as err:
        raise InputError(
            path, f"cannot be decoded as PNG, truncated or corrupt ({_first_line(err)})"
        ) from err
    return pixels.T.astype(np.float32) - HU_OFFSET


def _check_in_slice(csv_path: Path, row: LesionRow, width: int, height: int) -> np.ndarray:
    """The row's box clipped to the slice, (4,) x0, y0, x1, y1; raises if its points or box are outside."""
    limit = np.array([width, height], np.float64)
    where = f"line {row.line}: "
    if ((row.recist < 0) | (row.recist > limit)).any():
        raise InputError(
            csv_path, where + f"`Measurement_coordinates` has a point outside the {width} x {height} slice"
        )
    corners = row.box.reshape(2, 2)
    lo, hi = np.maximum(corners[0], 0), np.minimum(corners[1], limit)
    if ((corners < -BOX_MARGIN_PX) | (corners > limit + BOX_MARGIN_PX)).any() or (hi <= lo).any():
        box = ", ".join(f"{v:g}" for v in row.box)
        raise InputError(
            csv_path, where + f"`Bounding_boxes` {box} lies outside the {width} x {height} slice"
        )
    return np.concatenate([lo, hi])


@dataclass(frozen=True)
class _Group:
    name: str
    rows: tuple[LesionRow, ...]


class DeepLesionIndex:
    """The volumes of a DeepLesion folder, read one at a time (a map-style dataset of ``LesionVolume``).

    root: the folder holding ``DL_info.csv`` and ``Images_png/``.
    split: "train", "val" or "test" to keep one official split; None keeps all.
    tags_json: an optional tag file (``lesion_tags``, section ``"lesions"`` keyed by DL_info row).
    context_mm: read only the slices within this distance (mm) of a key slice; None reads the whole range.

    The CSV and the tag file are read and validated here; PNGs are read by ``index[i]``. Attributes:
    ``names`` (one per volume), ``tag_names``. Problems raise ``InputError`` naming the file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str | None = None,
        tags_json: str | os.PathLike | None = None,
        context_mm: float | None = None,
    ):
        if split is not None and split not in SPLITS.values():
            raise ConfigError("split", f"{split!r} is not one of {', '.join(SPLITS.values())}")
        if context_mm is not None and not (math.isfinite(context_mm) and context_mm >= 0):
            raise ConfigError("context_mm", f"{context_mm!r} is not a distance in mm (0 or more)")
        self.root = Path(root)
        self.csv_path = self.root / CSV_NAME
        self.context_mm = context_mm
        rows = read_dl_info(self.csv_path)
        self.tag_names, self._tags, self._uncertain = (
            read_tags_json(tags_json, "lesions") if tags_json else ((), {}, {})
        )
        for section, table in (("lesions", self._tags), ("uncertain", self._uncertain)):
            beyond = [row for row in table if row >= len(rows)]
            if beyond:
                raise InputError(
                    tags_json, f"`{section}` names row {beyond[0]}, but {self.csv_path} has {len(rows)} rows"
                )
        groups: dict[tuple[str, tuple[int, int]], list[LesionRow]] = {}
        for row in rows:
            if split is None or row.split == split:
                groups.setdefault((row.series, row.slice_range), []).append(row)
        if not groups:
            raise InputError(self.csv_path, f"holds no lesions of split {split!r}")
        self._groups = [
            _Group(f"{series}_{lo:03d}-{hi:03d}", tuple(members))
            for (series, (lo, hi)), members in groups.items()
        ]
        for group in self._groups:
            self._check_shared(group.rows)
        self.names = tuple(group.name for group in self._groups)

    def _check_shared(self, rows: tuple[LesionRow, ...]) -> None:
        first = rows[0]
        for row in rows[1:]:
            for attr, column in _SHARED.items():
                if getattr(row, attr) != getattr(first, attr):
                    raise InputError(
                        self.csv_path,
                        f"line {row.line}: `{column}` differs from line {first.line} of the same series "
                        f"and slice range ({getattr(row, attr)} against {getattr(first, attr)})",
                    )

    def __len__(self) -> int:
        return len(self._groups)

    def _slice_numbers(self, rows: tuple[LesionRow, ...]) -> range:
        first, last = rows[0].slice_range
        if self.context_mm is not None:
            reach = math.floor(self.context_mm / rows[0].spacing[2] + 1e-9)
            keys = [row.key_slice for row in rows]
            first, last = max(first, min(keys) - reach), min(last, max(keys) + reach)
        return range(first, last + 1)

    def __getitem__(self, index: int) -> LesionVolume:
        """Volume ``index``, reading its PNGs; raises IndexError past the end."""
        group = self._groups[index]
        rows, head = group.rows, group.rows[0]
        numbers = self._slice_numbers(rows)
        size = len(numbers) * math.prod(head.image_size) * 4
        if size > MAX_VOLUME_BYTES:
            raise InputError(
                self.csv_path,
                f"line {head.line}: {group.name} needs {len(numbers)} slices of {head.image_size[0]} x "
                f"{head.image_size[1]} pixels, {size} bytes, above the limit of {MAX_VOLUME_BYTES}",
            )
        folder = self.root / IMAGES_DIR / head.series
        image = None
        for k, number in enumerate(numbers):
            hu = read_slice_png(folder / f"{number:03d}.png", head.image_size, head.line)
            if image is None:
                image = np.empty((*hu.shape, len(numbers)), np.float32)
            elif hu.shape != image.shape[:2]:
                raise InputError(
                    folder / f"{number:03d}.png", f"is {hu.shape} pixels, unlike slice {numbers[0]}"
                )
            image[:, :, k] = hu
        width, height = image.shape[:2]

        lesions, masks = [], []
        for row in rows:
            box = _check_in_slice(self.csv_path, row, width, height)
            k = row.key_slice - numbers[0]
            long_mm, short_mm = recist_diameters_mm(row.recist, np.array(row.spacing[:2]))
            lesions.append(
                Lesion(
                    box=np.array([box[0], box[1], k, box[2], box[3], k + 1], np.float64),
                    key_slice=k,
                    tags=self._tags.get(row.row, ()),
                    long_axis_mm=long_mm,
                    short_axis_mm=short_mm,
                    recist=row.recist.copy(),
                    uncertain_tags=self._uncertain.get(row.row, ()),
                )
            )
            masks.append(recist_ellipse_mask(row.recist, (width, height)))
        instances = np.zeros(image.shape, np.int32)
        for n in sorted(range(len(rows)), key=lambda n: -int(masks[n].sum())):
            instances[:, :, lesions[n].key_slice][masks[n]] = n + 1

        meta = {
            "split": head.split,
            "series": head.series,
            "first_slice": numbers[0],
            "rows": tuple(row.row for row in rows),
            "windows": tuple(row.window for row in rows),
            "coarse_types": tuple(row.coarse_type for row in rows),
            "possibly_noisy": tuple(row.noisy for row in rows),
            "locations": tuple(row.location for row in rows),
        }
        if head.age is not None:
            meta["age"] = head.age
        if head.sex is not None:
            meta["sex"] = head.sex
        sx, sy, sz = head.spacing
        return LesionVolume(
            image=image,
            spacing=np.array(head.spacing, np.float64),
            affine=np.diag([-sx, -sy, sz, 1.0]),
            instances=instances,
            lesions=tuple(lesions),
            tag_names=self.tag_names,
            name=group.name,
            meta=meta,
        )
