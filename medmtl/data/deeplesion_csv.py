"""DeepLesion's ``DL_info.csv``: one validated record per lesion row.

The release's columns (any order; extra columns are ignored)::

    File_name                   <patient>_<study>_<series>_<slice>.png, e.g. 000001_01_01_109.png
    Patient_index, Study_index, Series_ID, Key_slice_index     integers matching File_name
    Measurement_coordinates     "x1, y1, x2, y2, x3, y3, x4, y4": RECIST end points in pixels, long axis first
    Bounding_boxes              "x0, y0, x1, y1" in pixels (the end points padded by 5 pixels)
    Lesion_diameters_Pixel_     "long, short" in pixels
    Normalized_lesion_location  "x, y, z" in 0..1 within the body
    Coarse_lesion_type          1..8 (``COARSE_TYPES``), -1 where unlabelled
    Possibly_noisy              0 or 1
    Slice_range                 "first, last": the 1-based slices stored for the series, inclusive
    Spacing_mm_px_              "x, y, z": pixel size and slice interval in mm
    Image_size                  "a, b": the slice's two sides in pixels
    DICOM_windows               "low, high" in HU
    Patient_gender              F, M or empty
    Patient_age                 years, or empty
    Train_Val_Test              1 = train, 2 = validation, 3 = test

x is the PNG's column and y its row. The README does not say which side ``Image_size`` gives first, so the
reader accepts either order; the image checks (points and boxes inside the slice) happen against the PNG.
Every problem raises ``InputError("<csv>", "line <n>: ...")``.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmtl.data.lesion_geometry import recist_diameters_mm
from medmtl.errors import InputError
from medmtl.io.text import read_text

COLUMNS = (
    "File_name",
    "Patient_index",
    "Study_index",
    "Series_ID",
    "Key_slice_index",
    "Measurement_coordinates",
    "Bounding_boxes",
    "Lesion_diameters_Pixel_",
    "Normalized_lesion_location",
    "Coarse_lesion_type",
    "Possibly_noisy",
    "Slice_range",
    "Spacing_mm_px_",
    "Image_size",
    "DICOM_windows",
    "Patient_gender",
    "Patient_age",
    "Train_Val_Test",
)
# Coarse_lesion_type n names COARSE_TYPES[n - 1] (the DeepLesion paper's numbering).
COARSE_TYPES = ("bone", "abdomen", "mediastinum", "liver", "lung", "kidney", "soft tissue", "pelvis")
SPLITS = {1: "train", 2: "val", 3: "test"}
# The release's DL_info.csv is 8.5 MB; a series folder stores at most a few hundred slices.
MAX_CSV_BYTES = 256 << 20
MAX_IMAGE_SIDE = 4096
MAX_SLICES = 1024
# Lesion_diameters_Pixel_ must match the lengths of the measured axes within this many pixels or this
# fraction, whichever is larger (the release rounds to six significant digits).
DIAMETER_TOLERANCE_PX = 0.1
DIAMETER_TOLERANCE = 0.01

_FILE_NAME = re.compile(r"([0-9]{1,9})_([0-9]{1,9})_([0-9]{1,9})_([0-9]{1,9})\.png")


@dataclass(frozen=True)
class LesionRow:
    """One DL_info.csv row. Pixel coordinates are (x, y) = (PNG column, PNG row) = (i, j) of the volume."""

    line: int
    row: int  # 0-based data row, the key of tag files
    series: str  # the Images_png folder, <patient>_<study>_<series>
    key_slice: int  # 1-based slice number (the PNG's name)
    recist: np.ndarray  # (4, 2) end points, long axis first
    box: np.ndarray  # (4,) x0, y0, x1, y1
    location: tuple[float, float, float]
    coarse_type: int
    noisy: bool
    slice_range: tuple[int, int]
    spacing: tuple[float, float, float]
    image_size: tuple[int, int]
    window: tuple[float, float]
    sex: str | None
    age: float | None
    split: str


class _Fields:
    """The fields of one row, with parsers that raise ``InputError`` naming the line and column."""

    def __init__(self, path: Path, line: int, fields: dict[str, str]):
        self.path, self.line, self.fields = path, line, fields

    def error(self, what: str) -> InputError:
        return InputError(self.path, f"line {self.line}: {what}")

    def text(self, column: str) -> str:
        return self.fields[column].strip()

    def bad(self, column: str, expected: str) -> InputError:
        return self.error(f"`{column}` is {self.text(column)[:80]!r}; expected {expected}")

    def numbers(self, column: str, count: int) -> np.ndarray:
        parts = self.text(column).split(",")
        expected = f"{count} comma-separated numbers" if count > 1 else "a number"
        try:
            values = np.array([float(part) for part in parts], np.float64)
        except ValueError:
            raise self.bad(column, expected) from None
        if len(values) != count:
            raise self.bad(column, expected)
        if not np.isfinite(values).all():
            raise self.bad(column, f"{expected} (finite, not NaN or Inf)")
        return values

    def integers(self, column: str, count: int) -> tuple[int, ...]:
        parts = self.text(column).split(",")
        expected = f"{count} comma-separated integers" if count > 1 else "an integer"
        if len(parts) != count or not all(re.fullmatch(r"-?[0-9]{1,9}", part.strip()) for part in parts):
            raise self.bad(column, expected)
        return tuple(int(part) for part in parts)

    def choice(self, column: str, allowed: tuple[int, ...]) -> int:
        (value,) = self.integers(column, 1)
        if value not in allowed:
            raise self.bad(column, f"one of {', '.join(map(str, allowed))}")
        return value


def _parse_row(fields: _Fields, row: int) -> LesionRow:
    name = fields.text("File_name")
    match = _FILE_NAME.fullmatch(name)
    if not match:
        raise fields.bad("File_name", "<patient>_<study>_<series>_<slice>.png")
    ids = [int(part) for part in match.groups()]
    for column, value in zip(("Patient_index", "Study_index", "Series_ID", "Key_slice_index"), ids):
        (stated,) = fields.integers(column, 1)
        if stated != value:
            raise fields.error(f"`{column}` is {stated} but `File_name` {name!r} says {value}")
    key = ids[3]

    first, last = fields.integers("Slice_range", 2)
    if not 1 <= first <= key <= last:
        raise fields.error(
            f"`Slice_range` {first}..{last} does not hold key slice {key} (slices count from 1)"
        )
    if last - first + 1 > MAX_SLICES:
        raise fields.error(f"`Slice_range` spans {last - first + 1} slices, above the limit of {MAX_SLICES}")
    spacing = fields.numbers("Spacing_mm_px_", 3)
    if (spacing <= 0).any():
        raise fields.bad("Spacing_mm_px_", "three sizes in mm above 0")
    size = fields.integers("Image_size", 2)
    if not all(1 <= side <= MAX_IMAGE_SIDE for side in size):
        raise fields.bad("Image_size", f"two sides of 1..{MAX_IMAGE_SIDE} pixels")

    recist = fields.numbers("Measurement_coordinates", 8).reshape(4, 2)
    box = fields.numbers("Bounding_boxes", 4)
    if not (box[0] < box[2] and box[1] < box[3]):
        raise fields.bad("Bounding_boxes", "x0, y0, x1, y1 with x0 < x1 and y0 < y1")
    stated = fields.numbers("Lesion_diameters_Pixel_", 2)
    measured = np.array(recist_diameters_mm(recist, np.ones(2)))
    if (np.abs(stated - measured) > np.maximum(DIAMETER_TOLERANCE_PX, DIAMETER_TOLERANCE * measured)).any():
        raise fields.error(
            f"`Lesion_diameters_Pixel_` {stated[0]:g}, {stated[1]:g} disagrees with the axes of "
            f"`Measurement_coordinates`, {measured[0]:.6g} and {measured[1]:.6g} pixels long"
        )

    window = fields.numbers("DICOM_windows", 2)
    if not window[0] < window[1]:
        raise fields.bad("DICOM_windows", "low, high with low < high")
    sex = fields.text("Patient_gender") or None
    if sex not in (None, "F", "M"):
        raise fields.bad("Patient_gender", "F, M or empty")
    age = float(fields.numbers("Patient_age", 1)[0]) if fields.text("Patient_age") else None
    if age is not None and age < 0:
        raise fields.bad("Patient_age", "an age in years, 0 or more")
    return LesionRow(
        line=fields.line,
        row=row,
        series="_".join(match.groups()[:3]),
        key_slice=key,
        recist=recist,
        box=box,
        location=tuple(fields.numbers("Normalized_lesion_location", 3).tolist()),
        coarse_type=fields.choice("Coarse_lesion_type", (-1, *range(1, len(COARSE_TYPES) + 1))),
        noisy=bool(fields.choice("Possibly_noisy", (0, 1))),
        slice_range=(first, last),
        spacing=tuple(spacing.tolist()),
        image_size=size,
        window=tuple(window.tolist()),
        sex=sex,
        age=age,
        split=SPLITS[fields.choice("Train_Val_Test", tuple(SPLITS))],
    )


def read_dl_info(path: Path) -> list[LesionRow]:
    """All rows of a DL_info.csv, validated, in file order. Raises ``InputError`` for the first problem."""
    reader = csv.reader(io.StringIO(read_text(path, MAX_CSV_BYTES, "DL_info.csv", "utf-8-sig"), newline=""))
    try:
        header = [name.strip() for name in next(reader, [])]
        if not any(header):
            raise InputError(path, "is empty; expected DL_info.csv's header line and one row per lesion")
        missing = [name for name in COLUMNS if name not in header]
        if missing:
            raise InputError(path, f"has no column {', '.join(f'`{m}`' for m in missing)} in its header line")
        twice = [name for name in COLUMNS if header.count(name) > 1]
        if twice:
            raise InputError(path, f"has the column `{twice[0]}` twice")
        rows = []
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                raise InputError(
                    path, f"line {reader.line_num}: has {len(fields)} fields; the header has {len(header)}"
                )
            row = _Fields(path, reader.line_num, dict(zip(header, fields)))
            rows.append(_parse_row(row, len(rows)))
    except csv.Error as err:
        raise InputError(path, f"line {reader.line_num}: is not valid CSV ({err})") from err
    if not rows:
        raise InputError(path, "holds a header but no lesion rows")
    return rows
