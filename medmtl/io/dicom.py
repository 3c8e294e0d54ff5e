"""One DICOM image series -> a volume with its patient geometry, or one ``InputError`` line.

``read_dicom_series(path)`` takes a folder (searched recursively), or one file, which stands for its whole
series in the file's folder, and returns a ``DicomSeries``: the image as nibabel would hold the same volume
in NIfTI, (I, J, K) with I along a row (DICOM columns), J down the rows and K through the slices in increasing
position along the slice normal, and a voxel -> RAS+ affine in mm. Values are modality values (Rescale Slope
and Intercept applied per slice: Hounsfield units for CT).

What is read:
- classic single-frame greyscale image storage (MONOCHROME1 or 2), uncompressed or in any transfer syntax
  pydicom can decode here (JPEG Lossless and JPEG-LS need ``pylibjpeg``; the message says so);
- files are DICOM when they carry the ``DICM`` preamble or end in ``.dcm``; other files (notes, thumbnails)
  are passed over. Derived objects (SEG, SR, RTSTRUCT, presentation states, ...) and DICOMDIR are passed over,
  so a folder may hold medmtl's own outputs beside the series;
- a folder holding several image series needs ``series_uid``; the message lists them with their folders and
  descriptions.

What is refused, naming the file: unreadable or truncated files (also a file cut before its pixel data,
which would otherwise look like a non-image object), files above ``MAX_FILE_BYTES``, the deflated transfer
syntax (it inflates without a bound), missing or non-finite geometry (Image Position / Orientation
(Patient), Pixel Spacing), non-orthonormal orientation, slices of other sizes, spacings or orientations than
the first slice, two slices at one position (also echoes or time points of one acquisition), slice
positions that are not evenly spaced along one line (a missing slice, a mixed series), a gantry tilt above
``MAX_TILT_DEGREES`` (smaller tilts give a sheared affine), colour, palette, multi-frame or Siemens mosaic
images, a Modality LUT or a zero Rescale Slope, pixel data shorter than the header declares, more than
``MAX_FILES`` files or ``MAX_VOXELS`` voxels, and a series of one slice (a volume needs two).

Memory: each file is read whole before it is parsed, so a damaged length field cannot make pydicom allocate
more than the file holds; headers are kept without pixels, the voxel count is checked before the volume is
made, and pixels are decoded one file at a time into it. Input files are opened read-only and never changed.
"""

from __future__ import annotations

import io
import math
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
# Larger angles between the slice step and the slice normal are refused (CT gantry tilts stay below ~30).
MAX_TILT_DEGREES = 30.0
# Patient coordinates and pixel spacings beyond these (mm) are damage, not anatomy.
MAX_POSITION_MM = 1e5
MAX_PIXEL_SPACING_MM = 1000.0
# Objects that are not images of the patient, whatever pixels they carry.
_NOT_IMAGES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC", "PLAN"}
_GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
_DEFLATED = "1.2.840.10008.1.2.1.99"
_MAGIC_OFFSET = 128


@dataclass(frozen=True)
class DicomSeries:
    """One image series as a volume.

    image: (I, J, K) float32 modality values.
    affine: (4, 4) float64 voxel -> RAS+ mm (nibabel's convention; DICOM's LPS with x and y negated). Sheared
        when the series has a gantry tilt.
    spacing: (3,) float64 mm between voxel centres along I, J, K (K: the step between slice positions).
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
    header: object  # the dataset without pixel data
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


def _short(value: object, limit: int = 80) -> str:
    """A header value for a one-line message: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError as err:
        raise InputError(path, f"cannot be read ({err.strerror or err})") from err


def _is_candidate(path: Path) -> bool:
    return (
        path.is_file()
        and not path.name.startswith(".")
        and (path.suffix.lower() == ".dcm" or _has_magic(path))
    )


def dicom_files(folder: str | os.PathLike) -> list[Path]:
    """The DICOM files under ``folder``, recursively, sorted.

    Raises ``InputError`` for a missing folder, one without DICOM files or one with more than ``MAX_FILES``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "no such folder")
    found = []
    for candidate in sorted(folder.rglob("*")):
        if _is_candidate(candidate):
            found.append(candidate)
            if len(found) > MAX_FILES:
                raise InputError(folder, f"holds more than {MAX_FILES} DICOM files; give one series' folder")
    if not found:
        raise InputError(folder, "holds no DICOM files (.dcm, or files with the DICM preamble)")
    return found


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding at least one DICOM file (stops at the first one found)."""
    path = Path(path)
    if not path.is_dir():
        return False
    for candidate in path.rglob("*"):
        try:
            if _is_candidate(candidate):
                return True
        except InputError:
            continue
    return False


def _transfer_syntax(data: bytes) -> str:
    """The Transfer Syntax UID of a Part 10 file's meta group (explicit VR little endian by the standard),
    found without parsing the rest; "" when it is not there."""
    meta = data[_MAGIC_OFFSET + 4 : _MAGIC_OFFSET + 4 + 4096]
    at = meta.find(b"\x02\x00\x10\x00UI")  # (0002,0010) UI
    if at < 0 or at + 8 > len(meta):
        return ""
    length = int.from_bytes(meta[at + 6 : at + 8], "little")
    return meta[at + 8 : at + 8 + length].rstrip(b"\x00 ").decode("ascii", "replace")


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
    if not force and _transfer_syntax(data) == _DEFLATED:
        raise InputError(
            path,
            "uses the deflated transfer syntax, which medmtl does not read (it inflates without a size bound); "
            "convert the series first, e.g. `dcmconv +te` (DCMTK) or `gdcmconv --raw`",
        )
    try:
        # From memory: a damaged length field then reads at most what the file holds.
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except MemoryError:
        raise
    except Exception as err:
        raise InputError(path, f"is not a readable DICOM file ({_first_line(err)})") from err
    if len(ds) == 0:
        raise InputError(path, "is not a readable DICOM file (no data elements)")
    return ds


def _guarded(path: Path, what, *args):
    """``what(path, *args)``, with pydicom's lazily parsed values turning damage into one ``InputError``."""
    try:
        return what(path, *args)
    except (InputError, MemoryError):
        raise
    except Exception as err:  # pydicom converts raw values on first access: damage shows up here
        raise InputError(path, f"has a damaged header ({_first_line(err)})") from err


def _floats(ds, keyword: str, count: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    if value is None:
        raise InputError(path, f"has no {keyword}, so its place in the patient is unknown")
    single = isinstance(value, (str, bytes)) or not hasattr(value, "__iter__")
    values = [value] if single else list(value)
    try:
        out = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(path, f"{keyword} {_short(value)} is not {count} numbers") from err
    if out.shape != (count,) or not np.isfinite(out).all():
        raise InputError(path, f"{keyword} must be {count} finite numbers, got {_short(values)}")
    return out


def _optional_float(ds, keyword: str, default: float, path: Path) -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError) as err:
        raise InputError(path, f"{keyword} {_short(value)} is not a number") from err
    if not math.isfinite(out):
        raise InputError(path, f"{keyword} must be finite, got {_short(value)}")
    return out


def _classify(path: Path, ds) -> str | None:
    """The Series Instance UID of a patient image, or None for a derived object (SEG, SR, ...) or DICOMDIR.

    A dataset that is neither but has no pixel data is a truncated copy of an image: refused, since passing
    it over would silently drop a slice.
    """
    if str(ds.get("Modality", "") or "").strip().upper() in _NOT_IMAGES or "DirectoryRecordSequence" in ds:
        return None
    if "PixelData" not in ds:
        raise InputError(path, "has no pixel data and is no derived object (SEG, SR, ...): a truncated file?")
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if not uid or "\n" in uid or len(uid) > 64:
        raise InputError(path, f"has no valid SeriesInstanceUID ({_short(uid)}), so its series is unknown")
    return uid


def _slice(path: Path, ds) -> _Slice:
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if samples != 1 or photometric not in _GREYSCALE:
        raise InputError(
            path,
            f"is a {_short(photometric)} image, {samples} samples per pixel; medmtl reads greyscale series",
        )
    frames = ds.get("NumberOfFrames")
    if frames is not None and str(frames).strip() != "" and int(frames) != 1:
        raise InputError(
            path, f"is a multi-frame image ({_short(frames)} frames); medmtl reads one slice per file"
        )
    image_type = ds.get("ImageType") or ()
    values = image_type.split("\\") if isinstance(image_type, str) else list(image_type)
    if "MOSAIC" in [str(v).strip().upper() for v in values]:
        raise InputError(
            path, "is a Siemens mosaic (many slices tiled in one image); convert it with dcm2niix first"
        )
    if "ModalityLUTSequence" in ds:
        raise InputError(path, "maps its pixels through a Modality LUT, which medmtl does not apply")
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows < 1 or columns < 1 or rows * columns > MAX_SLICE_PIXELS:
        raise InputError(path, f"declares {rows} x {columns} pixels (1 to {MAX_SLICE_PIXELS} per slice)")
    spacing = _floats(ds, "PixelSpacing", 2, path)
    if not ((spacing > 0) & (spacing <= MAX_PIXEL_SPACING_MM)).all():
        raise InputError(
            path, f"PixelSpacing must be in (0, {MAX_PIXEL_SPACING_MM:g}] mm, got {spacing.tolist()}"
        )
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
    position = _floats(ds, "ImagePositionPatient", 3, path)
    if np.abs(position).max() > MAX_POSITION_MM:
        raise InputError(path, f"ImagePositionPatient {position.tolist()} lies beyond {MAX_POSITION_MM:g} mm")
    slope = _optional_float(ds, "RescaleSlope", 1.0, path)
    if slope == 0:
        raise InputError(path, "RescaleSlope is 0, which would make every pixel one value")
    return _Slice(
        path=path,
        header=_without_pixels(ds),
        rows=rows,
        columns=columns,
        pixel_spacing=spacing,
        row_cosine=row_cos / np.linalg.norm(row_cos),
        column_cosine=col_cos / np.linalg.norm(col_cos),
        position=position,
        slope=slope,
        intercept=_optional_float(ds, "RescaleIntercept", 0.0, path),
    )


def _without_pixels(ds):
    """A copy of ``ds`` without its pixel data (the original keeps it)."""
    import pydicom

    header = pydicom.Dataset({tag: ds[tag] for tag in ds.keys() if tag != 0x7FE00010})
    header.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
    header.preamble = getattr(ds, "preamble", None)
    return header


def _is_compressed(syntax) -> bool:
    """Whether a Transfer Syntax UID names a compressed syntax; False for none or an unknown UID."""
    try:
        return bool(syntax is not None and syntax.is_compressed)
    except ValueError:  # pydicom: "UID is not a transfer syntax"
        return False


def _pixels(s: _Slice) -> np.ndarray:
    """The slice's stored values as (Rows, Columns), read again from its file, after checking the declared
    size against the data."""
    path = s.path
    ds = _read_dataset(path)
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        compressed = _is_compressed(syntax)
        bits = int(ds.get("BitsAllocated") or 0)
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
        hint = ""
        if _is_compressed(syntax):
            hint = f"; {syntax.name} needs pylibjpeg[all], or convert the series with `gdcmconv --raw`"
        raise InputError(path, f"pixel data cannot be decoded ({_first_line(err)}){hint}") from err
    if array.shape != (s.rows, s.columns):
        raise InputError(path, f"decodes to {array.shape}, not the declared {s.rows} x {s.columns}")
    return array


def _group(paths: Sequence[Path]) -> dict[str, list[_Slice]]:
    """{Series Instance UID: its slices} of the image files among ``paths`` (headers only)."""
    series: dict[str, list[_Slice]] = {}
    for path in paths:
        ds = _read_dataset(path)
        uid = _guarded(path, _classify, ds)
        if uid is not None:
            series.setdefault(uid, []).append(_guarded(path, _slice, ds))
        del ds
    return series


def _describe(uid: str, slices: list[_Slice], root: Path) -> str:
    folders = sorted({os.path.relpath(s.path.parent, root) for s in slices})
    description = str(slices[0].header.get("SeriesDescription", "") or "").strip()
    where = folders[0] if len(folders) == 1 else f"{len(folders)} folders"
    label = f" {_short(description, 40)}" if description else ""
    return f"{uid}{label} ({len(slices)} files in {where})"


def _choose(series: dict[str, list[_Slice]], where: Path, series_uid: str | None) -> tuple[str, list[_Slice]]:
    root = where if where.is_dir() else where.parent
    if not series:
        raise InputError(where, "holds no DICOM image series (only derived objects such as SEG or SR)")
    if series_uid is not None:
        if series_uid not in series:
            listed = "; ".join(_describe(u, s, root) for u, s in sorted(series.items()))
            raise InputError(where, f"holds no series {series_uid[:64]} (it holds {listed})")
        return series_uid, series[series_uid]
    if len(series) > 1:
        listed = "; ".join(_describe(u, s, root) for u, s in sorted(series.items()))
        raise InputError(where, f"holds {len(series)} image series; give one series' folder: {listed}")
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
                slices[k + 1].path,
                f"lies at the same position as {slices[k].path.name} ({gap:.4f} mm apart): two images per "
                "position (echoes, time points or b-values?) or a copied file",
            )
    n = len(slices)
    step = (slices[-1].position - slices[0].position) / (n - 1)
    length = float(np.linalg.norm(step))
    tolerance = POSITION_ATOL_MM + POSITION_RTOL * length
    worst = max(
        range(n), key=lambda k: float(np.linalg.norm(slices[k].position - (slices[0].position + k * step)))
    )
    off = float(np.linalg.norm(slices[worst].position - (slices[0].position + worst * step)))
    if off > tolerance:
        k = int(np.argmax(gaps))
        raise InputError(
            slices[k + 1].path,
            f"slice positions are not evenly spaced: {gaps[k]:.3f} mm from {slices[k].path.name} to here, "
            f"{np.median(gaps):.3f} mm between most slices (a missing slice or a mixed series)",
        )
    tilt = math.degrees(math.acos(min(1.0, float(step @ normal) / length)))
    if tilt > MAX_TILT_DEGREES:
        raise InputError(
            slices[0].path,
            f"its series steps {tilt:.1f} degrees away from the slice normal (limit {MAX_TILT_DEGREES:g}): "
            "resample it to an untilted grid first",
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


def read_dicom_series(path: str | os.PathLike, series_uid: str | None = None) -> DicomSeries:
    """The image series in folder ``path`` (``series_uid`` picks one of several), or the series of file
    ``path`` among the files of its folder.

    Raises ``InputError`` (one line naming the file) for everything in the module docstring.
    """
    path = Path(path)
    where = path
    if path.is_file():
        uid = _guarded(path, _classify, _read_dataset(path))
        if uid is None:
            raise InputError(path, "is a derived object (SEG, SR, ...) or DICOMDIR, not an image")
        series_uid, where = uid, path.parent
    elif not path.exists():
        raise InputError(path, "no such file or folder")
    uid, slices = _choose(_group(dicom_files(where)), path, series_uid)
    if len(slices) < 2:
        raise InputError(
            slices[0].path, "its series holds one slice; a volume needs at least two (give the whole series)"
        )
    first = slices[0]
    voxels = first.rows * first.columns * len(slices)
    if voxels > MAX_VOXELS:
        raise InputError(path, f"series {uid} holds {voxels} voxels, above the limit of {MAX_VOXELS}")
    _check_alike(slices)
    slices, step = _stack_geometry(slices)
    first = slices[0]
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
    header = first.header
    return DicomSeries(
        image=image,
        affine=affine,
        spacing=np.array([column_spacing, row_spacing, float(np.linalg.norm(step))]),
        files=tuple(s.path for s in slices),
        datasets=tuple(s.header for s in slices),
        series_uid=uid,
        modality=str(header.get("Modality", "") or ""),
        description=str(header.get("SeriesDescription", "") or ""),
        meta=_meta(header),
    )
