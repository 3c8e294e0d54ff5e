"""One DICOM image series -> a volume with its patient geometry, or one ``InputError`` line.

``read_dicom_series(path)`` takes a folder (searched recursively) or one file of the series, and returns
a ``DicomSeries``: the image as nibabel would hold the same volume in NIfTI, (I, J, K) with I along a row
(DICOM columns), J down the rows and K through the slices in increasing position along the slice normal,
and a voxel -> RAS+ affine in mm. Values are modality values (Rescale Slope and Intercept applied per slice:
Hounsfield units for CT).

What is read:
- classic single-frame image storage, uncompressed or in any transfer syntax pydicom can decode here;
- files are DICOM when they carry the ``DICM`` preamble or end in ``.dcm``; other files (notes, thumbnails)
  are passed over. Objects without image pixels or with a derived modality (DICOMDIR, SEG, SR, RTSTRUCT,
  presentation states) are passed over, so a folder may hold medmtl's own outputs beside the series;
- a folder holding several image series needs ``series_uid`` (the message lists them).

What is refused, naming the file: unreadable or truncated files, files above ``MAX_FILE_BYTES``, missing or
non-finite geometry (Image Position / Orientation (Patient), Pixel Spacing), non-orthonormal orientation,
slices of other sizes, spacings or orientations than the first, two slices at one position, slice positions
that are not evenly spaced along one line (a missing slice, a mixed series), colour or multi-frame images,
pixel data shorter than the header declares, more than ``MAX_FILES`` files or ``MAX_VOXELS`` voxels, and a
series of one slice (a volume needs two). Sizes are checked against these limits before any array is made
from a header's numbers, and files are read whole into memory first, so a damaged length field cannot make
the reader allocate more than the file holds. Input files are opened read-only and never changed.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medmtl.errors import InputError

MAX_FILES = 8192
MAX_FILE_BYTES = 1 << 30
MAX_SLICE_PIXELS = 8192 * 8192
MAX_VOXELS = 1 << 28  # 1 GiB as float32
# Slice positions must lie on one line, evenly spaced, to this tolerance (mm): DICOM stores them as decimal
# strings of up to 16 characters, and scanners round them.
POSITION_ATOL_MM = 0.01
POSITION_RTOL = 0.02
# Orientation cosines: unit length and orthogonal to this tolerance; equal across slices to this tolerance.
ORIENTATION_ATOL = 1e-3
# Objects that are not images of the patient, whatever pixels they carry.
_NOT_IMAGES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC", "PLAN"}
_MAGIC_OFFSET = 128


@dataclass(frozen=True)
class DicomSeries:
    """One image series as a volume.

    image: (I, J, K) float32 modality values.
    affine: (4, 4) float64 voxel -> RAS+ mm (nibabel's convention; DICOM's LPS with x and y negated).
    spacing: (3,) float64 mm between voxel centres along I, J, K.
    files: the slice files in K order.
    datasets: their headers in K order, without pixel data (for outputs that reference the series).
    series_uid, modality, description: from the headers ("" where absent).
    meta: ``{"age": years, "sex": "M" | "F" | "O"}`` where the headers hold them.
    """

    image: np.ndarray
    affine: np.ndarray
    spacing: np.ndarray
    files: tuple[Path, ...]
    datasets: tuple = ()
    series_uid: str = ""
    modality: str = ""
    description: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class _Slice:
    path: Path
    dataset: object
    rows: int
    columns: int
    pixel_spacing: np.ndarray  # (row spacing, column spacing) mm
    row_cosine: np.ndarray  # direction of increasing column index
    column_cosine: np.ndarray  # direction of increasing row index
    position: np.ndarray  # centre of the first pixel, LPS mm
    slope: float
    intercept: float


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _has_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError as err:
        raise InputError(path, f"cannot be read ({err.strerror or err})") from err


def dicom_files(path: str | os.PathLike) -> list[Path]:
    """The DICOM files under a folder (recursively, sorted), or ``[path]`` for a file.

    Raises ``InputError`` for a missing path, a folder without DICOM files or one with more than
    ``MAX_FILES``.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(path, "no such file or folder")
    found = []
    for candidate in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if candidate.suffix.lower() == ".dcm" or _has_magic(candidate):
            found.append(candidate)
            if len(found) > MAX_FILES:
                raise InputError(path, f"holds more than {MAX_FILES} DICOM files; give one series' folder")
    if not found:
        raise InputError(path, "holds no DICOM files (.dcm, or files with the DICM preamble)")
    return found


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding at least one DICOM file (stops at the first one found)."""
    path = Path(path)
    if not path.is_dir():
        return False
    for candidate in path.rglob("*"):
        if candidate.is_file() and not candidate.name.startswith("."):
            try:
                if candidate.suffix.lower() == ".dcm" or _has_magic(candidate):
                    return True
            except InputError:
                continue
    return False


def _read_dataset(path: Path):
    import pydicom

    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(path, f"is {size} bytes, above the limit of {MAX_FILE_BYTES} for one DICOM file")
        data = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"cannot be read ({err.strerror or err})") from err
    force = data[_MAGIC_OFFSET : _MAGIC_OFFSET + 4] != b"DICM"
    try:
        # From memory: a damaged length field then reads at most what the file holds.
        return pydicom.dcmread(io.BytesIO(data), force=force)
    except MemoryError:
        raise
    except Exception as err:
        raise InputError(path, f"is not a readable DICOM file ({_first_line(err)})") from err


def _floats(ds, keyword: str, count: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    if value is None:
        raise InputError(path, f"has no {keyword}, so its place in the patient is unknown")
    single = isinstance(value, (str, bytes)) or not hasattr(value, "__iter__")
    values = [value] if single else list(value)
    try:
        out = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(path, f"{keyword} {value!r} is not {count} numbers") from err
    if out.shape != (count,) or not np.isfinite(out).all():
        raise InputError(path, f"{keyword} must be {count} finite numbers, got {list(values)}")
    return out


def _optional_float(ds, keyword: str, default: float, path: Path) -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError) as err:
        raise InputError(path, f"{keyword} {value!r} is not a number") from err
    if not np.isfinite(out):
        raise InputError(path, f"{keyword} must be finite, got {value!r}")
    return out


def _is_image(ds) -> bool:
    """Whether a dataset is a patient image this reader should stack (pixels, not a derived object)."""
    return "PixelData" in ds and str(ds.get("Modality", "")).upper() not in _NOT_IMAGES


def _slice(path: Path, ds) -> _Slice:
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise InputError(
            path, f"is a colour image ({samples} samples per pixel); medmtl reads greyscale series"
        )
    frames = ds.get("NumberOfFrames")
    if frames is not None and str(frames).strip() not in ("", "1"):
        raise InputError(path, f"is a multi-frame image ({frames} frames); medmtl reads one slice per file")
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows < 1 or columns < 1 or rows * columns > MAX_SLICE_PIXELS:
        raise InputError(path, f"declares {rows} x {columns} pixels (1 to {MAX_SLICE_PIXELS} per slice)")
    spacing = _floats(ds, "PixelSpacing", 2, path)
    if not (spacing > 0).all():
        raise InputError(path, f"PixelSpacing must be positive, got {spacing.tolist()}")
    orientation = _floats(ds, "ImageOrientationPatient", 6, path)
    row_cos, col_cos = orientation[:3], orientation[3:]
    if (
        abs(np.linalg.norm(row_cos) - 1) > ORIENTATION_ATOL
        or abs(np.linalg.norm(col_cos) - 1) > ORIENTATION_ATOL
        or abs(row_cos @ col_cos) > ORIENTATION_ATOL
    ):
        raise InputError(
            path, f"ImageOrientationPatient {orientation.tolist()} is not two orthogonal unit vectors"
        )
    return _Slice(
        path=path,
        dataset=ds,
        rows=rows,
        columns=columns,
        pixel_spacing=spacing,
        row_cosine=row_cos / np.linalg.norm(row_cos),
        column_cosine=col_cos / np.linalg.norm(col_cos),
        position=_floats(ds, "ImagePositionPatient", 3, path),
        slope=_optional_float(ds, "RescaleSlope", 1.0, path),
        intercept=_optional_float(ds, "RescaleIntercept", 0.0, path),
    )


def _series_uid(path: Path, ds) -> str:
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if not uid:
        raise InputError(path, "has no SeriesInstanceUID, so its series is unknown")
    return uid


def _pixels(s: _Slice) -> np.ndarray:
    """The slice's stored values as (Rows, Columns), after checking the declared size against the data."""
    ds, path = s.dataset, s.path
    try:
        bits = int(ds.get("BitsAllocated") or 0)
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        compressed = bool(syntax is not None and syntax.is_compressed)
        if bits not in (1, 8, 16, 32, 64):
            raise InputError(path, f"BitsAllocated {bits} is not 1, 8, 16, 32 or 64")
        expected = (s.rows * s.columns * bits + 7) // 8
        held = len(ds.PixelData)
        if not compressed and held < expected:
            raise InputError(
                path,
                f"holds {held} bytes of pixel data; its header declares {s.rows} x {s.columns} x {bits} bits",
            )
        array = ds.pixel_array
    except (InputError, MemoryError):
        raise
    except Exception as err:
        raise InputError(path, f"pixel data cannot be decoded ({_first_line(err)})") from err
    if array.shape != (s.rows, s.columns):
        raise InputError(path, f"decodes to {array.shape}, not the declared {s.rows} x {s.columns}")
    return array


def _group(paths: Sequence[Path]) -> dict[str, list[tuple[Path, object]]]:
    series: dict[str, list[tuple[Path, object]]] = {}
    for path in paths:
        ds = _read_dataset(path)
        try:
            if not _is_image(ds):
                continue
            uid = _series_uid(path, ds)
        except InputError:
            raise
        except MemoryError:
            raise
        except Exception as err:  # pydicom parses values lazily: damage shows up on first access
            raise InputError(path, f"has a damaged header ({_first_line(err)})") from err
        series.setdefault(uid, []).append((path, ds))
    return series


def _choose(series: dict[str, list], where: Path, series_uid: str | None) -> tuple[str, list]:
    if not series:
        raise InputError(where, "holds no DICOM image series (only non-image objects such as SEG or SR)")
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(where, f"holds no series {series_uid} (series: {', '.join(sorted(series))})")
        return series_uid, series[series_uid]
    if len(series) > 1:
        listed = ", ".join(f"{uid} ({len(files)} files)" for uid, files in sorted(series.items()))
        raise InputError(where, f"holds {len(series)} image series; choose one by its UID: {listed}")
    return next(iter(series.items()))


def _check_alike(slices: list[_Slice]) -> None:
    first = slices[0]
    for s in slices[1:]:
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise InputError(
                s.path, f"is {s.rows} x {s.columns}, but {first.path.name} is {first.rows} x {first.columns}"
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-5):
            raise InputError(
                s.path,
                f"PixelSpacing {s.pixel_spacing.tolist()} differs from {first.pixel_spacing.tolist()} "
                f"of {first.path.name}",
            )
        if not (
            np.allclose(s.row_cosine, first.row_cosine, atol=ORIENTATION_ATOL)
            and np.allclose(s.column_cosine, first.column_cosine, atol=ORIENTATION_ATOL)
        ):
            raise InputError(s.path, f"has another orientation than {first.path.name}")


def _stack_geometry(slices: list[_Slice]) -> tuple[list[_Slice], np.ndarray]:
    """Slices sorted along the normal, and the step between neighbours (LPS mm), checked to be even."""
    normal = np.cross(slices[0].row_cosine, slices[0].column_cosine)
    order = sorted(range(len(slices)), key=lambda i: float(slices[i].position @ normal))
    slices = [slices[i] for i in order]
    heights = np.array([s.position @ normal for s in slices])
    gaps = np.diff(heights)
    for k, gap in enumerate(gaps):
        if gap < POSITION_ATOL_MM:
            raise InputError(
                slices[k + 1].path, f"lies at the same position as {slices[k].path.name} ({gap:.4f} mm apart)"
            )
    n = len(slices)
    step = (slices[-1].position - slices[0].position) / (n - 1)
    length = float(np.linalg.norm(step))
    tolerance = POSITION_ATOL_MM + POSITION_RTOL * length
    for k, s in enumerate(slices):
        off = float(np.linalg.norm(s.position - (slices[0].position + k * step)))
        if off > tolerance:
            raise InputError(
                s.path,
                f"is {off:.3f} mm from where an evenly spaced series would put slice {k} of {n} "
                f"(slice gaps {gaps.min():.3f} to {gaps.max():.3f} mm): a missing slice or a mixed series",
            )
    return slices, step


def _age_years(value) -> float | None:
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", str(value or ""))
    if not match:
        return None
    per_year = {"D": 365.25, "W": 52.1775, "M": 12.0, "Y": 1.0}[match.group(2)]
    return int(match.group(1)) / per_year


def _meta(ds) -> dict:
    meta: dict = {}
    try:
        age = _age_years(ds.get("PatientAge"))
        sex = str(ds.get("PatientSex", "") or "").strip().upper()
    except MemoryError:
        raise
    except Exception:  # optional fields: a damaged one is simply unknown
        return meta
    if age is not None:
        meta["age"] = age
    if sex in ("M", "F", "O"):
        meta["sex"] = sex
    return meta


def _without_pixels(ds):
    header = ds.copy()
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            del header[keyword]
    return header


def read_dicom_series(path: str | os.PathLike, series_uid: str | None = None) -> DicomSeries:
    """The image series in folder (or of file) ``path``; ``series_uid`` picks one of several.

    Raises ``InputError`` (one line naming the file) for everything in the module docstring.
    """
    path = Path(path)
    paths = dicom_files(path)
    uid, members = _choose(_group(paths), path, series_uid)
    slices = []
    for file, ds in members:
        try:
            slices.append(_slice(file, ds))
        except (InputError, MemoryError):
            raise
        except Exception as err:
            raise InputError(file, f"has a damaged header ({_first_line(err)})") from err
    if len(slices) < 2:
        raise InputError(
            slices[0].path if path.is_file() else path,
            f"series {uid} holds one slice; a volume needs at least two (give the folder of the whole series)",
        )
    _check_alike(slices)
    slices, step = _stack_geometry(slices)
    first = slices[0]
    voxels = first.rows * first.columns * len(slices)
    if voxels > MAX_VOXELS:
        raise InputError(path, f"series {uid} holds {voxels} voxels, above the limit of {MAX_VOXELS}")
    image = np.empty((first.columns, first.rows, len(slices)), dtype=np.float32)
    limit = float(np.finfo(np.float32).max)
    for k, s in enumerate(slices):
        with np.errstate(over="ignore", invalid="ignore"):
            values = _pixels(s) * s.slope + s.intercept  # float64: no overflow before the check
        if not np.isfinite(values).all() or np.abs(values).max() > limit:
            raise InputError(
                s.path,
                f"RescaleSlope {s.slope:g} and RescaleIntercept {s.intercept:g} give values beyond float32",
            )
        image[:, :, k] = values.T
    row_spacing, column_spacing = first.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = first.row_cosine * column_spacing
    lps[:3, 1] = first.column_cosine * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = first.position
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    ds = first.dataset
    return DicomSeries(
        image=image,
        affine=affine,
        spacing=np.array([column_spacing, row_spacing, float(np.linalg.norm(step))]),
        files=tuple(s.path for s in slices),
        datasets=tuple(_without_pixels(s.dataset) for s in slices),
        series_uid=uid,
        modality=str(ds.get("Modality", "") or ""),
        description=str(ds.get("SeriesDescription", "") or ""),
        meta=_meta(ds),
    )
