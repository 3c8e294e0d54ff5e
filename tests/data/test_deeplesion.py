"""The DeepLesion reader on a tiny copy of the released layout (``tests/lesion_files.py``), checked against
hand-computed boxes, spacing, HU, diameters, weak masks and tags, and one clear error per bad input."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from lesion_files import DL_HEADER, DL_ROWS, dl_hu, write_deeplesion, write_dl_csv, write_png

from medmtl.data import deeplesion as deeplesion_module
from medmtl.data.deeplesion import DeepLesionIndex
from medmtl.errors import ConfigError, InputError

A, B1, B2 = "000001_01_01_001-005", "000002_01_02_001-003", "000002_01_02_004-006"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_deeplesion(tmp_path_factory.mktemp("deeplesion"))


@pytest.fixture(scope="module")
def volumes(root):
    index = DeepLesionIndex(root, tags_json=root / "tags.json")
    return {name: index[i] for i, name in enumerate(index.names)}


def test_rows_group_by_series_and_slice_range(root):
    index = DeepLesionIndex(root)
    assert index.names == (A, B1, B2) and len(index) == 3 and index.tag_names == ()
    with pytest.raises(IndexError):
        index[3]


@pytest.mark.parametrize(
    "name, series, numbers, spacing",
    [(A, "000001_01_01", range(1, 6), (0.8, 0.8, 5.0)), (B2, "000002_01_02", range(4, 7), (0.7, 0.7, 2.5))],
)
def test_image_axes_hu_spacing_and_affine(volumes, name, series, numbers, spacing):
    volume = volumes[name]
    x, y = np.meshgrid(np.arange(32), np.arange(24), indexing="ij")  # i = PNG column, j = PNG row
    expected = np.stack([dl_hu(x, y, n, series) for n in numbers], axis=-1)
    assert volume.image.dtype == np.float32 and volume.image.shape == (32, 24, len(numbers))
    np.testing.assert_array_equal(volume.image, expected)
    np.testing.assert_array_equal(volume.spacing, spacing)
    np.testing.assert_array_equal(volume.affine, np.diag([-spacing[0], -spacing[1], spacing[2], 1.0]))
    assert volume.meta["first_slice"] == numbers[0] and volume.meta["series"] == series


# name -> per lesion: (box, key slice, tags, long mm, short mm)
EXPECTED = {
    A: [
        ((1, 5, 2, 21, 18, 3), 2, (0, 2), 8.0, 4.8),
        ((17, 0, 2, 31, 13, 3), 2, (1,), 0.8 * math.sqrt(32), 0.8 * math.sqrt(32)),  # y0 = -1 clipped
        ((0, 13, 3, 17, 24, 4), 3, (), 6.4, 3.2),  # x0 = -1 and y1 = 27 clipped
    ],
    B1: [((5, 3, 1, 25, 17, 2), 1, (), 7.0, 2.8)],
    B2: [((0, 0, 1, 12, 20, 2), 1, (2,), 7.0, 2.8)],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lesions_boxes_diameters_and_tags(volumes, name):
    volume = volumes[name]
    assert volume.tag_names == ("liver", "lung", "node")
    assert len(volume.lesions) == len(EXPECTED[name])
    for lesion, (box, key, tags, long_mm, short_mm) in zip(volume.lesions, EXPECTED[name]):
        np.testing.assert_array_equal(lesion.box, box)
        assert lesion.box.dtype == np.float64
        assert (lesion.key_slice, lesion.tags) == (key, tags)
        assert (lesion.long_axis_mm, lesion.short_axis_mm) == pytest.approx((long_mm, short_mm), abs=1e-5)


def test_uncertain_tags_from_the_tag_file(root, tmp_path):
    tags = json.loads((root / "tags.json").read_text())
    row = min(int(k) for k in tags["lesions"])
    free = next(t for t in range(len(tags["tag_names"])) if t not in tags["lesions"][str(row)])
    path = tmp_path / "tags.json"
    path.write_text(json.dumps({**tags, "uncertain": {str(row): [free]}}))
    index = DeepLesionIndex(root, tags_json=path)
    lesions = [lesion for i in range(len(index)) for lesion in index[i].lesions]
    assert [lesion.uncertain_tags for lesion in lesions].count((free,)) == 1
    assert all(lesion.uncertain_tags in ((), (free,)) for lesion in lesions)


def test_recist_points_keep_the_csv_coordinates(volumes):
    np.testing.assert_array_equal(volumes[A].lesions[0].recist, [[6, 10], [16, 10], [11, 7], [11, 13]])


def test_weak_masks_are_recist_ellipses_on_key_slices_only(volumes):
    instances = volumes[A].instances
    assert instances.dtype == np.int32 and instances.shape == (32, 24, 5)
    assert not instances[..., [0, 1, 4]].any()
    # Lesion 1: semi-axes 5 (x) and 3 (y) around (11, 10); by rows dy = 0, +-1, +-2, +-3: 11 + 18 + 14 + 2.
    first = np.argwhere(instances[:, :, 2] == 1)
    assert len(first) == 45 and len(first) == pytest.approx(math.pi * 5 * 3, rel=0.05)
    assert {tuple(p) for p in first} >= {(6, 10), (16, 10), (11, 7), (11, 13)}
    # Lesion 2: a circle of radius sqrt 8 around (24, 6), the 5 x 5 square; lesion 3: semi-axes 4 and 2
    # around (8, 20) on k = 3, 9 + 14 + 2 pixels.
    assert np.argwhere(instances[:, :, 2] == 2).tolist() == [
        [i, j] for i in range(22, 27) for j in range(4, 9)
    ]
    assert (instances[:, :, 3] == 3).sum() == 25 and instances[8, 20, 3] == 3 and instances[4, 20, 3] == 3


def test_smaller_lesion_keeps_overlapping_pixels(tmp_path):
    rows = list(DL_ROWS)
    rows[2] = {
        **rows[2],
        "Measurement_coordinates": "10, 10, 12, 10, 11, 9, 11, 11",
        "Bounding_boxes": "5, 4, 17, 16",
    }
    rows[2]["Lesion_diameters_Pixel_"] = "2, 2"
    volume = DeepLesionIndex(write_deeplesion(tmp_path, tuple(rows)))[0]
    assert (volume.instances[:, :, 2] == 2).sum() == 5 and volume.instances[11, 10, 2] == 2
    assert (volume.instances[:, :, 2] == 1).sum() == 45 - 5


def test_meta(volumes):
    meta = volumes[A].meta
    assert (meta["split"], meta["age"], meta["sex"]) == ("train", 62.0, "F")
    assert meta["rows"] == (0, 2, 3)
    assert meta["windows"] == ((-175.0, 275.0), (-1500.0, 500.0), (-175.0, 275.0))
    assert meta["coarse_types"] == (4, 5, -1) and meta["possibly_noisy"] == (False, False, True)
    assert meta["locations"][0] == (0.3, 0.4, 0.5)
    meta = volumes[B1].meta
    assert (meta["split"], meta["sex"], "age" in meta) == ("test", "M", False)


def test_split_filter(root):
    assert DeepLesionIndex(root, split="test").names == (B1, B2)
    assert DeepLesionIndex(root, split="train").names == (A,)
    with pytest.raises(InputError, match="no lesions of split 'val'"):
        DeepLesionIndex(root, split="val")
    with pytest.raises(ConfigError, match="not one of train, val, test"):
        DeepLesionIndex(root, split="training")


@pytest.mark.parametrize(
    "context_mm, first, count, keys",
    [(0.0, 3, 2, (0, 0, 1)), (5.0, 2, 4, (1, 1, 2)), (99.0, 1, 5, (2, 2, 3))],
)
def test_context_reads_only_slices_near_key_slices(root, context_mm, first, count, keys):
    volume = DeepLesionIndex(root, context_mm=context_mm)[0]
    assert volume.meta["first_slice"] == first and volume.image.shape[-1] == count
    assert tuple(lesion.key_slice for lesion in volume.lesions) == keys
    assert volume.lesions[0].box[2] == keys[0]
    np.testing.assert_array_equal(
        volume.image[0, 0], [dl_hu(0, 0, first + k, "000001_01_01") for k in range(count)]
    )


def test_context_does_not_open_other_slices(tmp_path):
    root = write_deeplesion(tmp_path)
    (root / "Images_png" / "000001_01_01" / "001.png").unlink()
    assert DeepLesionIndex(root, context_mm=5.0)[0].image.shape[-1] == 4
    with pytest.raises(InputError, match="no such file"):
        DeepLesionIndex(root)[0]


def test_volume_size_limit_is_checked_before_reading(root, monkeypatch):
    monkeypatch.setattr(deeplesion_module, "MAX_VOLUME_BYTES", 32 * 24 * 4 * 5 - 1)
    with pytest.raises(InputError, match="above the limit"):
        DeepLesionIndex(root)[0]
    assert DeepLesionIndex(root)[1].image.shape == (32, 24, 3)


# --- one clear error per bad input ------------------------------------------------------------------------


def _edit(row: int, **fields: str) -> Callable[[Path], None]:
    """The fixture with one row of DL_info.csv edited (the PNGs stay those of the fixture)."""

    def build(root: Path) -> None:
        rows = list(DL_ROWS)
        rows[row] = {**rows[row], **fields}
        write_deeplesion(root)
        write_dl_csv(root / "DL_info.csv", tuple(rows))

    return build


def _files(edit: Callable[[Path], None]) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        write_deeplesion(root)
        edit(root)

    return build


def _png(root: Path, number: int = 2) -> Path:
    return root / "Images_png" / "000001_01_01" / f"{number:03d}.png"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _header_without(column: str) -> Callable[[Path], None]:
    return _files(
        lambda root: write_dl_csv(root / "DL_info.csv", DL_ROWS, [c for c in DL_HEADER if c != column])
    )


def _tags(tags: dict) -> Callable[[Path], None]:
    return _files(lambda root: (root / "tags.json").write_text(json.dumps(tags)))


# name -> (builder, the file the error names, words it must contain, where it is raised: index or volume)
BAD: dict[str, tuple[Callable[[Path], None], str, tuple[str, ...], str]] = {
    "missing_column": (_header_without("Bounding_boxes"), "csv", ("no column `Bounding_boxes`",), "index"),
    "non_numeric": (
        _edit(0, Spacing_mm_px_="0.8, abc, 5"),
        "csv",
        ("line 2", "`Spacing_mm_px_`", "abc"),
        "index",
    ),
    "nan_spacing": (_edit(0, Spacing_mm_px_="nan, 0.8, 5"), "csv", ("line 2", "not NaN"), "index"),
    "zero_spacing": (_edit(1, Spacing_mm_px_="0.7, 0, 2.5"), "csv", ("line 3", "above 0"), "index"),
    "too_few_numbers": (
        _edit(0, Bounding_boxes="1, 5, 21"),
        "csv",
        ("line 2", "4 comma-separated numbers"),
        "index",
    ),
    "box_outside": (
        _edit(0, Bounding_boxes="40, 5, 50, 18"),
        "csv",
        ("line 2", "outside the 32 x 24 slice"),
        "volume",
    ),
    "box_reversed": (_edit(0, Bounding_boxes="21, 5, 1, 18"), "csv", ("line 2", "x0 < x1"), "index"),
    "point_outside": (
        _edit(3, Measurement_coordinates="4, 20, 12, 20, 8, 18, 8, 30", Lesion_diameters_Pixel_="8, 12"),
        "csv",
        ("line 5", "outside the 32 x 24 slice"),
        "volume",
    ),
    "diameters_disagree": (
        _edit(0, Lesion_diameters_Pixel_="12, 6"),
        "csv",
        ("line 2", "disagrees"),
        "index",
    ),
    "key_outside_range": (
        _edit(0, Slice_range="4, 5"),
        "csv",
        ("line 2", "does not hold key slice 3"),
        "index",
    ),
    "name_mismatch": (_edit(0, Key_slice_index="4"), "csv", ("`Key_slice_index` is 4", "says 3"), "index"),
    "bad_file_name": (_edit(0, File_name="000001_01_01/003.png"), "csv", ("`File_name`",), "index"),
    "range_too_long": (_edit(1, Slice_range="1, 2000"), "csv", ("above the limit of 1024",), "index"),
    "bad_split": (_edit(0, Train_Val_Test="4"), "csv", ("`Train_Val_Test`", "one of 1, 2, 3"), "index"),
    "bad_sex": (_edit(0, Patient_gender="X"), "csv", ("`Patient_gender`",), "index"),
    "series_disagrees": (
        _edit(2, Patient_age="63"),
        "csv",
        ("line 4", "`Patient_age` differs from line 2"),
        "index",
    ),
    "field_count": (
        _files(lambda root: open(root / "DL_info.csv", "a").write("a,b,c\n")),
        "csv",
        ("line 7", "3 fields"),
        "index",
    ),
    "empty_csv": (_files(lambda root: (root / "DL_info.csv").write_text("")), "csv", ("is empty",), "index"),
    "not_utf8": (
        _files(lambda root: (root / "DL_info.csv").write_bytes(b"\xff\xfe\x00bad")),
        "csv",
        ("UTF-8",),
        "index",
    ),
    "no_csv": (_files(lambda root: (root / "DL_info.csv").unlink()), "csv", ("no such file",), "index"),
    "missing_png": (
        _files(lambda root: _png(root, 4).unlink()),
        "png4",
        ("no such file", "line 2"),
        "volume",
    ),
    "truncated_png": (
        _files(lambda root: _truncate(_png(root))),
        "png2",
        ("truncated or corrupt",),
        "volume",
    ),
    "png_8bit": (
        _files(lambda root: write_png(_png(root), np.full((24, 32), 7, np.uint8))),
        "png2",
        ("8-bit grayscale", "16-bit"),
        "volume",
    ),
    "png_rgb": (
        _files(lambda root: write_png(_png(root), np.zeros((24, 32, 3), np.uint8))),
        "png2",
        ("mode RGB",),
        "volume",
    ),
    "png_size": (
        _files(lambda root: write_png(_png(root), np.zeros((24, 30), np.uint16))),
        "png2",
        ("is 30 x 24 pixels", "`Image_size` 32, 24"),
        "volume",
    ),
    "not_png": (
        _files(lambda root: _png(root).write_bytes(b"GIF89a" + bytes(40))),
        "png2",
        ("cannot be decoded",),
        "volume",
    ),
    "tags_unknown_row": (
        _tags({"tag_names": ["a"], "lesions": {"5": [0]}}),
        "tags",
        ("row 5", "has 5 rows"),
        "index",
    ),
    "tags_bad_id": (
        _tags({"tag_names": ["a"], "lesions": {"1": [1]}}),
        "tags",
        ("tag id 1", "ids 0..0"),
        "index",
    ),
    "tags_bad_key": (
        _tags({"tag_names": ["a"], "lesions": {"01": [0]}}),
        "tags",
        ("'01'", "non-negative integer"),
        "index",
    ),
    "tags_not_json": (
        _files(lambda root: (root / "tags.json").write_text("{")),
        "tags",
        ("not valid JSON",),
        "index",
    ),
    "tags_no_names": (_tags({"lesions": {}}), "tags", ("`tag_names`",), "index"),
    "uncertain_unknown_row": (
        _tags({"tag_names": ["a"], "uncertain": {"7": [0]}}),
        "tags",
        ("`uncertain` names row 7",),
        "index",
    ),
    "tags_twice": (_tags({"tag_names": ["a", "a"]}), "tags", ("'a' twice",), "index"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_clear_error(tmp_path, case):
    build, where, words, stage = BAD[case]
    build(tmp_path)
    files = {
        "csv": tmp_path / "DL_info.csv",
        "tags": tmp_path / "tags.json",
        "png2": _png(tmp_path),
        "png4": _png(tmp_path, 4),
    }
    with pytest.raises(InputError) as err:
        index = DeepLesionIndex(tmp_path, tags_json=tmp_path / "tags.json")
        assert stage == "volume", f"{case} should be refused by the index"
        index[0]
    assert err.value.where == str(files[where])
    assert "\n" not in str(err.value)
    for word in words:
        assert word in err.value.what


def test_bad_context_is_a_config_error(root):
    with pytest.raises(ConfigError, match="context_mm"):
        DeepLesionIndex(root, context_mm=float("nan"))
