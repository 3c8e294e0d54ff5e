"""Real DICOM series for the tests: pydicom's CT_small.dcm and MR_small.dcm (real scanner files, shipped with
pydicom; ``data_cards/pydicom_test_files.md``) copied into a series of slices.

``write_series`` changes only what a series needs per slice (Series/SOP Instance UID, Instance Number,
Image Position (Patient), optionally the orientation and the pixel values) and writes the slices under
shuffled file names, so that readers must sort by position, not by name.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def source(name: str = "CT_small.dcm") -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def write_series(
    folder: Path,
    num_slices: int = 4,
    step_mm: float = 2.5,
    name: str = "CT_small.dcm",
    orientation: Sequence[float] | None = None,
    series_uid: str | None = None,
    prefix: str = "",
    pixel_spacing: tuple[float, float] | None = None,
    rows: int | None = None,
    tilt_mm: float = 0.0,
    intercepts: Sequence[float] | None = None,
) -> tuple[Path, list[pydicom.Dataset]]:
    """``num_slices`` slices ``step_mm`` apart along the slice normal, each slice's pixels the source's plus
    10 * k (k = position order). Returns the folder and the datasets in position order.

    pixel_spacing: (row, column) spacing in mm instead of the source's. rows: keep only the first rows (a
    non-square image). tilt_mm: each slice also moves this far along the column direction (a gantry tilt).
    intercepts: a Rescale Intercept per slice instead of the source's."""
    folder.mkdir(parents=True, exist_ok=True)
    base = source(name)
    if orientation is not None:
        base.ImageOrientationPatient = [float(v) for v in orientation]
    if pixel_spacing is not None:
        base.PixelSpacing = [float(v) for v in pixel_spacing]
    if rows is not None:
        base.PixelData = base.pixel_array[:rows].tobytes()
        base.Rows = rows
    cosines = np.array([float(v) for v in base.ImageOrientationPatient])
    normal = np.cross(cosines[:3], cosines[3:])
    origin = np.array([float(v) for v in base.ImagePositionPatient])
    uid = series_uid or generate_uid()
    order = np.random.default_rng(num_slices).permutation(num_slices)
    written = []
    for k in range(num_slices):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        position = origin + k * step_mm * normal + k * tilt_mm * cosines[3:]
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        if intercepts is not None:
            ds.RescaleIntercept = float(intercepts[k])
        pixels = base.pixel_array.astype(np.int32) + 10 * k
        ds.PixelData = pixels.astype(base.pixel_array.dtype).tobytes()
        ds.save_as(folder / f"{prefix}im{order[k]:03d}.dcm")
        written.append(ds)
    return folder, written


def modality_values(ds: pydicom.Dataset) -> np.ndarray:
    """(Rows, Columns) float64 stored values times Rescale Slope plus Intercept."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return ds.pixel_array.astype(np.float64) * slope + intercept
