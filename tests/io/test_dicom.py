"""``read_dicom_series``: real DICOM slices (pydicom's CT and MR test files) stacked into a volume with the
geometry DICOM defines, and one ``InputError`` line for each way a series can be broken."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_files import modality_values, source, write_series
from pydicom.uid import generate_uid

from medmtl.errors import InputError
from medmtl.io.dicom import is_dicom_folder, read_dicom_series


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_an_axial_ct_series_reads_in_position_order_with_hounsfield_units(tmp_path):
    folder, written = write_series(tmp_path / "ct", num_slices=5, step_mm=2.5)
    before = _digest(folder)
    series = read_dicom_series(folder)
    assert series.image.shape == (128, 128, 5) and series.image.dtype == np.float32
    for k, ds in enumerate(written):
        # I runs along a row (columns), J down the rows; CT_small stores -1024 + slope 1.
        np.testing.assert_array_equal(series.image[:, :, k], modality_values(ds).T)
    assert series.image.min() < -800  # air in Hounsfield units, so the rescale was applied
    np.testing.assert_allclose(series.spacing, [0.661468, 0.661468, 2.5], atol=1e-6)
    # DICOM's LPS with x and y negated: a row runs to the patient's left, rows run back, slices up.
    assert nib.aff2axcodes(series.affine) == ("L", "P", "S")
    origin = np.array([158.135803, 179.035797, -75.699997])
    np.testing.assert_allclose(series.affine[:3, 3], origin, atol=1e-6)
    assert series.series_uid == written[0].SeriesInstanceUID and series.modality == "CT"
    assert series.meta == {"age": 0.0, "sex": "O"}
    assert all("PixelData" not in ds for ds in series.datasets)
    assert _digest(folder) == before  # inputs untouched


def test_files_come_out_in_position_order(tmp_path):
    folder, written = write_series(tmp_path / "ct", num_slices=6)
    series = read_dicom_series(folder)
    numbers = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in series.files]
    assert numbers == [1, 2, 3, 4, 5, 6]
    assert [ds.SOPInstanceUID for ds in series.datasets] == [ds.SOPInstanceUID for ds in written]


def test_an_oblique_series_maps_voxels_to_the_dicom_patient_position(tmp_path):
    angle = np.deg2rad(20)
    row = [np.cos(angle), np.sin(angle), 0.0]
    column = [0.0, 0.0, -1.0]  # coronal-ish, tilted
    folder, written = write_series(
        tmp_path / "mr", num_slices=3, step_mm=4.0, name="MR_small.dcm", orientation=row + column
    )
    series = read_dicom_series(folder)
    assert series.image.shape == (64, 64, 3)
    # Hand-computed from DICOM PS3.3 C.7.6.2.1.1: P = S + i * dc * row + j * dr * column, k along the normal.
    ds = written[2]
    s = np.array([float(v) for v in ds.ImagePositionPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    i, j = 10, 50
    lps = s + i * dc * np.array(row) + j * dr * np.array(column)
    ras = series.affine @ np.array([i, j, 2, 1.0])
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-5)
    assert series.spacing[2] == pytest.approx(4.0, abs=1e-5)
    assert series.meta == {"sex": "F"}  # MR_small has no age


def test_non_image_objects_and_other_files_are_passed_over(tmp_path):
    folder, _ = write_series(tmp_path / "ct", num_slices=3)
    (folder / "notes.txt").write_text("not DICOM")
    report = pydicom.Dataset()
    report.Modality = "SR"
    report.SeriesInstanceUID = generate_uid()
    report.SOPInstanceUID = generate_uid()
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    report.file_meta = pydicom.dataset.FileMetaDataset()
    report.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID
    report.save_as(folder / "report.dcm", enforce_file_format=True)
    assert read_dicom_series(folder).image.shape == (128, 128, 3)
    assert is_dicom_folder(folder) and not is_dicom_folder(tmp_path / "missing")


def test_several_series_need_a_uid(tmp_path):
    folder, first = write_series(tmp_path / "two", num_slices=3)
    _, second = write_series(tmp_path / "two", num_slices=2, prefix="b", name="MR_small.dcm")
    with pytest.raises(InputError, match="holds 2 image series; give one series' folder") as err:
        read_dicom_series(folder)
    assert first[0].SeriesInstanceUID in str(err.value) and "\n" not in str(err.value)
    assert read_dicom_series(folder, series_uid=second[0].SeriesInstanceUID).image.shape == (64, 64, 2)
    with pytest.raises(InputError, match=r"holds no series 1\.2\.3"):
        read_dicom_series(folder, series_uid="1.2.3")


def _rewrite(path: Path, **changes) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def _slice_file(folder: Path, number: int) -> Path:
    for path in sorted(folder.glob("*.dcm")):
        if int(pydicom.dcmread(path, stop_before_pixels=True).InstanceNumber) == number:
            return path
    raise AssertionError(number)


def test_a_missing_slice_is_refused(tmp_path):
    folder, _ = write_series(tmp_path / "ct", num_slices=5)
    _slice_file(folder, 3).unlink()
    with pytest.raises(InputError, match="a missing slice or a mixed series"):
        read_dicom_series(folder)


def test_two_slices_at_one_position_are_refused(tmp_path):
    folder, written = write_series(tmp_path / "ct", num_slices=4)
    _rewrite(_slice_file(folder, 4), ImagePositionPatient=list(written[2].ImagePositionPatient))
    with pytest.raises(InputError, match="lies at the same position as"):
        read_dicom_series(folder)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ImagePositionPatient": None}, "has no ImagePositionPatient"),
        ({"PixelSpacing": ["nan", "0.66"]}, "PixelSpacing must be 2 finite numbers"),
        ({"PixelSpacing": [0, 0.66]}, r"PixelSpacing must be in \(0, 1000\] mm"),
        ({"ImageOrientationPatient": [1, 0, 0, 1, 0, 0]}, "is not two orthogonal unit vectors"),
        ({"ImageOrientationPatient": [0, 1, 0, 1, 0, 0]}, "has another orientation than"),
        ({"PixelSpacing": [0.7, 0.7]}, "PixelSpacing .* differs from"),
        ({"SamplesPerPixel": 3}, "3 samples per pixel; medmtl reads greyscale"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "is a 'PALETTE COLOR' image"),
        ({"RescaleSlope": 0}, "RescaleSlope is 0"),
        ({"NumberOfFrames": 4}, "is a multi-frame image"),
        ({"Rows": 4096, "Columns": 4096}, "is 4096 x 4096, but"),
        ({"RescaleSlope": "inf"}, "RescaleSlope must be finite"),
        ({"BitsAllocated": 12}, "BitsAllocated 12 is not"),
        ({"SeriesInstanceUID": None}, "has no valid SeriesInstanceUID"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(v),
)
def test_a_broken_header_is_one_line_naming_the_file(tmp_path, changes, message):
    folder, _ = write_series(tmp_path / "ct", num_slices=3)
    broken = _slice_file(folder, 2)
    _rewrite(broken, **changes)
    with pytest.raises(InputError, match=message) as err:
        read_dicom_series(folder)
    assert "\n" not in str(err.value)
    if "differs" not in message and "another orientation" not in message:
        assert str(err.value).startswith(str(broken))


def test_a_header_declaring_more_pixels_than_the_file_holds_is_refused(tmp_path):
    folder, _ = write_series(tmp_path / "ct", num_slices=3)
    for path in folder.glob("*.dcm"):
        _rewrite(path, Rows=40000, Columns=40000)
    with pytest.raises(InputError, match="declares 40000 x 40000 pixels"):
        read_dicom_series(folder)
    for path in folder.glob("*.dcm"):
        _rewrite(path, Rows=4096, Columns=4096)
    with pytest.raises(
        InputError, match="holds 32768 bytes of pixel data; its header declares 4096 x 4096 x 16"
    ):
        read_dicom_series(folder)


def test_a_truncated_slice_is_refused(tmp_path):
    folder, _ = write_series(tmp_path / "ct", num_slices=3)
    path = _slice_file(folder, 2)
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(InputError, match=f"^{path}: .*pixel data") as err:
        read_dicom_series(folder)
    assert "\n" not in str(err.value)


def test_one_slice_empty_folders_and_other_sizes(tmp_path):
    folder, _ = write_series(tmp_path / "one", num_slices=1)
    with pytest.raises(InputError, match="holds one slice; a volume needs at least two"):
        read_dicom_series(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no DICOM files"):
        read_dicom_series(tmp_path / "empty")
    with pytest.raises(InputError, match="no such file or folder"):
        read_dicom_series(tmp_path / "missing")
    with pytest.raises(InputError, match="series holds one slice"):
        read_dicom_series(next(folder.glob("*.dcm")))
    mixed = tmp_path / "mixed"
    _, ct = write_series(mixed, num_slices=2)
    ds = copy.deepcopy(source("MR_small.dcm"))
    ds.SeriesInstanceUID = ct[0].SeriesInstanceUID
    ds.ImageOrientationPatient = ct[0].ImageOrientationPatient
    ds.save_as(mixed / "other.dcm")
    with pytest.raises(InputError, match=r"is 64 x 64, but .* is 128 x 128|is 128 x 128, but .* is 64 x 64"):
        read_dicom_series(mixed)


def test_a_non_square_image_with_unequal_spacings_keeps_rows_and_columns_apart(tmp_path):
    folder, written = write_series(tmp_path / "ct", num_slices=3, pixel_spacing=(0.5, 0.8), rows=100)
    series = read_dicom_series(folder)
    assert series.image.shape == (128, 100, 3)  # (columns, rows, slices)
    np.testing.assert_array_equal(series.image[:, :, 1], modality_values(written[1]).T)
    np.testing.assert_allclose(series.spacing, [0.8, 0.5, 2.5])
    # Column index i moves 0.8 mm along the row direction (+x LPS = -x RAS), row index j 0.5 mm along +y LPS.
    origin = series.affine @ [0, 0, 0, 1]
    np.testing.assert_allclose(series.affine @ [7, 0, 0, 1] - origin, [-5.6, 0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(series.affine @ [0, 9, 0, 1] - origin, [0, -4.5, 0, 0], atol=1e-9)


def test_one_file_stands_for_its_series_and_slices_rescale_on_their_own(tmp_path):
    folder, written = write_series(tmp_path / "ct", num_slices=3, intercepts=[-1024, -1000, 0])
    write_series(folder, num_slices=2, prefix="mr", name="MR_small.dcm")  # another series beside it
    one = _slice_file(folder, 2)
    series = read_dicom_series(one)
    assert series.image.shape == (128, 128, 3) and series.series_uid == written[0].SeriesInstanceUID
    for k, ds in enumerate(written):
        np.testing.assert_array_equal(series.image[:, :, k], modality_values(ds).T)
    assert modality_values(written[2]).min() >= 0 > modality_values(written[0]).min()


def test_a_gantry_tilt_shears_the_affine_and_a_steep_one_is_refused(tmp_path):
    folder, written = write_series(tmp_path / "tilt", num_slices=4, step_mm=2.0, tilt_mm=0.5)
    series = read_dicom_series(folder)
    last = np.array([float(v) for v in written[3].ImagePositionPatient])
    np.testing.assert_allclose(series.affine @ [0, 0, 3, 1], [*(last * [-1, -1, 1]), 1], atol=1e-5)
    assert series.spacing[2] == pytest.approx(np.hypot(2.0, 0.5), abs=1e-5)
    steep = write_series(tmp_path / "steep", num_slices=3, step_mm=1.0, tilt_mm=1.0)[0]
    with pytest.raises(InputError, match=r"45\.0 degrees away from the slice normal"):
        read_dicom_series(steep)


def test_derived_objects_with_pixels_are_passed_over(tmp_path):
    folder, _ = write_series(tmp_path / "ct", num_slices=3)
    seg = source("CT_small.dcm")
    seg.Modality = "SEG"
    seg.SeriesInstanceUID = generate_uid()
    seg.save_as(folder / "seg.dcm")
    assert read_dicom_series(folder).image.shape == (128, 128, 3)


@pytest.mark.parametrize("number", [1, 4])
def test_a_file_cut_before_its_pixels_is_refused_not_skipped(tmp_path, number):
    """Cut in its header, the first or last slice parses as a dataset without pixels: passing it over as a
    non-image would silently drop a slice that no spacing check can miss."""
    folder, _ = write_series(tmp_path / "ct", num_slices=4)
    path = _slice_file(folder, number)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match=f"^{path}: has no pixel data"):
        read_dicom_series(folder)
    path.write_bytes(b"")
    with pytest.raises(InputError, match=f"^{path}: is not a readable DICOM file"):
        read_dicom_series(folder)


def test_deflated_files_and_oversized_series_are_refused_before_parsing(tmp_path, monkeypatch):
    folder, _ = write_series(tmp_path / "ct", num_slices=3)
    path = _slice_file(folder, 2)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(path)
    with pytest.raises(InputError, match=f"^{path}: uses the deflated transfer syntax"):
        read_dicom_series(folder)
    clean, _ = write_series(tmp_path / "clean", num_slices=3)
    monkeypatch.setattr("medmtl.io.dicom.MAX_VOXELS", 128 * 128 * 2)
    with pytest.raises(InputError, match="holds 49152 voxels, above the limit of 32768"):
        read_dicom_series(clean)


def test_a_real_siemens_mosaic_is_refused_not_read_as_one_slice(tmp_path):
    """nibabel's 0.dcm and 1.dcm: two real Siemens diffusion MR files, each a mosaic of 48 slices tiled in one
    256 x 256 image. Stacked as two slices they would make a meaningless volume without any other error."""
    data = Path(nib.__file__).parent / "nicom" / "tests" / "data"
    folder = tmp_path / "siemens"
    folder.mkdir()
    for name in ("0.dcm", "1.dcm"):
        (folder / name).write_bytes((data / name).read_bytes())
    with pytest.raises(InputError, match=r"is a Siemens mosaic .* convert it with dcm2niix"):
        read_dicom_series(folder)
