"""Tiny lesion datasets in their released layouts, for the lesion reader tests and their fuzz tests.

DeepLesion (``write_deeplesion``): ``DL_info.csv`` with the release's 18 columns, spelled and quoted as
released, and ``Images_png/<series>/<slice:03d>.png`` 16-bit PNGs of 32 columns x 24 rows storing HU + 32768.
Five lesion rows in three volumes:

- ``000001_01_01`` slices 1..5 (0.8 x 0.8 x 5 mm, train, F, 62 y): rows 0 and 2 on key slice 3 (row 2's box
  pokes 1 px above the slice and is clipped), row 3 on key slice 4 (its box pokes past two edges);
- ``000002_01_02`` slices 1..3 (0.7 x 0.7 x 2.5 mm, test, M, no age): row 1 on key slice 2;
- ``000002_01_02`` slices 4..6 (same series, second range): row 4 on key slice 5.

Slice values are ``dl_hu(x, y, slice, series)`` so that axes, slice order and the HU offset can be checked.

NIfTI (``write_nifti_case``): a 20 x 18 x 7 int16 image with scl_inter = -1024 and instance labels with the
values 2 (a cross on k = 3, single pixels on k = 2 and 4) and 5 (a bar on k = 5), plus a tag file.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

DL_HEADER = (
    "File_name,Patient_index,Study_index,Series_ID,Key_slice_index,Measurement_coordinates,Bounding_boxes,"
    "Lesion_diameters_Pixel_,Normalized_lesion_location,Coarse_lesion_type,Possibly_noisy,Slice_range,"
    "Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,Patient_age,Train_Val_Test"
).split(",")
DL_WIDTH, DL_HEIGHT = 32, 24  # PNG columns (x, i) and rows (y, j)
SERIES = {"000001_01_01": 0, "000002_01_02": 1}


def dl_hu(x: np.ndarray, y: np.ndarray, number: int, series: str) -> np.ndarray:
    """The HU value the fixture stores at column x, row y of slice ``number`` of ``series``."""
    return x * 7 + y * 3 + number * 100 - 1000 + SERIES.get(series, 0) * 50


def _row(name: str, coords: str, box: str, diameters: str, **fields: str) -> dict[str, str]:
    patient, study, series, key = name[:-4].split("_")
    row = {
        "File_name": name,
        "Patient_index": str(int(patient)),
        "Study_index": str(int(study)),
        "Series_ID": str(int(series)),
        "Key_slice_index": str(int(key)),
        "Measurement_coordinates": coords,
        "Bounding_boxes": box,
        "Lesion_diameters_Pixel_": diameters,
        "Normalized_lesion_location": "0.3, 0.4, 0.5",
        "Coarse_lesion_type": "-1",
        "Possibly_noisy": "0",
    }
    return {**row, **fields}


_A = {
    "Slice_range": "1, 5",
    "Spacing_mm_px_": "0.8, 0.8, 5",
    "Image_size": "32, 24",
    "DICOM_windows": "-175, 275",
    "Patient_gender": "F",
    "Patient_age": "62",
    "Train_Val_Test": "1",
}
_B = {
    "Spacing_mm_px_": "0.7, 0.7, 2.5",
    "Image_size": "24, 32",
    "DICOM_windows": "-175, 275",
    "Patient_gender": "M",
    "Patient_age": "",
    "Train_Val_Test": "3",
}
# Long axis first: row 0 (10, 6) px, row 2 (sqrt 32, sqrt 32), row 3 (8, 4), row 1 (10, 4), row 4 (10, 4).
DL_ROWS = (
    _row(
        "000001_01_01_003.png",
        "6, 10, 16, 10, 11, 7, 11, 13",
        "1, 5, 21, 18",
        "10, 6",
        Coarse_lesion_type="4",
        **_A,
    ),
    _row(
        "000002_01_02_002.png",
        "10, 10, 20, 10, 15, 8, 15, 12",
        "5, 3, 25, 17",
        "10, 4",
        Slice_range="1, 3",
        **_B,
    ),
    _row(
        "000001_01_01_003.png",
        "22, 4, 26, 8, 22, 8, 26, 4",
        "17, -1, 31, 13",
        "5.65685, 5.65685",
        Coarse_lesion_type="5",
        **{**_A, "DICOM_windows": "-1500, 500"},
    ),
    _row(
        "000001_01_01_004.png",
        "4, 20, 12, 20, 8, 18, 8, 22",
        "-1, 13, 17, 27",
        "8, 4",
        Possibly_noisy="1",
        **_A,
    ),
    _row(
        "000002_01_02_005.png", "5, 5, 5, 15, 3, 10, 7, 10", "0, 0, 12, 20", "10, 4", Slice_range="4, 6", **_B
    ),
)
DL_TAGS = {"tag_names": ["liver", "lung", "node"], "lesions": {"0": [0, 2], "2": [1], "4": 2}}


def write_dl_csv(path: Path, rows: tuple[dict[str, str], ...], header: list[str] = DL_HEADER) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(column, "") for column in header])


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_deeplesion(
    root: Path, rows: tuple[dict[str, str], ...] = DL_ROWS, tags: dict | None = DL_TAGS
) -> Path:
    """The DeepLesion layout under ``root`` (PNGs for every row's slice range); returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    write_dl_csv(root / "DL_info.csv", rows)
    y, x = np.mgrid[:DL_HEIGHT, :DL_WIDTH]
    for row in rows:
        series = row["File_name"].rsplit("_", 1)[0]
        first, last = (int(n) for n in row["Slice_range"].split(","))
        for number in range(first, last + 1):
            path = root / "Images_png" / series / f"{number:03d}.png"
            if not path.exists():
                write_png(path, (dl_hu(x, y, number, series) + 32768).astype(np.uint16))
    if tags is not None:
        (root / "tags.json").write_text(json.dumps(tags))
    return root


# --- NIfTI ---------------------------------------------------------------------------------------------------

NIFTI_SHAPE = (20, 18, 7)
NIFTI_SPACING = (0.8, 0.9, 2.5)
NIFTI_AFFINE = np.array(
    [[-0.8, 0.0, 0.0, 40.0], [0.0, 0.9, 0.0, -20.0], [0.0, 0.0, 2.5, 7.5], [0.0, 0.0, 0.0, 1.0]]
)
NIFTI_TAGS = {"tag_names": ["a", "b", "c", "d"], "instances": {"2": [3, 0], "5": 1}}


def nifti_stored() -> np.ndarray:
    """The int16 values the image stores; HU = stored - 1024."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in NIFTI_SHAPE), indexing="ij")
    return (i + 20 * j + 400 * k).astype(np.int16)


def nifti_labels() -> np.ndarray:
    labels = np.zeros(NIFTI_SHAPE, np.uint8)
    labels[4:13, 6, 3] = 2  # cross on k = 3: 9 px along i ...
    labels[8, 4:9, 3] = 2  # ... and 5 px along j
    labels[8, 6, 2] = labels[8, 6, 4] = 2
    labels[15, 10:16, 5] = 5  # bar of 6 px along j on k = 5
    return labels


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = NIFTI_AFFINE, inter: float = 0.0) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(
        np.abs(np.diag(affine)[: min(data.ndim, 3)]).tolist() + [1.0] * max(data.ndim - 3, 0)
    )
    if inter:
        img.header.set_slope_inter(1.0, inter)
    nib.save(img, path)
    return path


def write_nifti_case(folder: Path, case: str = "case") -> tuple[Path, Path, Path]:
    """(image, labels, tags) of the NIfTI fixture in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    image = write_nifti(folder / f"{case}_img.nii.gz", nifti_stored(), inter=-1024.0)
    labels = write_nifti(folder / f"{case}_seg.nii.gz", nifti_labels())
    tags = folder / f"{case}.json"
    tags.write_text(json.dumps(NIFTI_TAGS))
    return image, labels, tags


def raw_nifti(
    path: Path,
    shape: tuple[int, ...],
    dtype: str | np.dtype,
    data: bytes,
    zooms: tuple[float, ...] = NIFTI_SPACING,
    vox_offset: int = 352,
    **fields: float,
) -> Path:
    """A NIfTI-1 file written byte by byte, so its header may say anything: shape, dtype, zooms, offset and
    any other header ``fields`` (e.g. ``scl_slope``).

    ``.gz`` paths are gzip-compressed. No sform or qform: nibabel derives the affine from the zooms. The
    data follows the header at byte 352 whatever ``vox_offset`` says.
    """
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["pixdim"][1 : 1 + len(zooms)] = zooms
    header["vox_offset"] = vox_offset
    header["magic"] = b"n+1"
    for name, value in fields.items():
        header[name] = value
    blob = header.binaryblock + bytes(4) + data
    path.write_bytes(gzip.compress(blob, mtime=0) if path.name.endswith(".gz") else blob)
    return path


def save_lesion_checkpoint(path, init_args: dict, seed: int = 0, perturb: float = 0.0):
    """A checkpoint shaped like the ones `medmtl fit` writes for a ``LesionNet`` (untrained weights, seeded),
    its weights spread by ``perturb`` when given (the heatmap head starts at a constant prior)."""
    import torch
    from conftest import save_fit_checkpoint

    from medmtl.models.lesion_net import LesionNet

    torch.manual_seed(seed)
    return save_fit_checkpoint(path, LesionNet(**init_args), dict(init_args), perturb)
    return path
