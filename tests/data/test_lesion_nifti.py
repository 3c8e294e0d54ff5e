"""The NIfTI lesion reader and its folder layout on a hand-made 20 x 18 x 7 case (``tests/lesion_files.py``):
boxes, key slices and diameters computed by hand, and one clear error per bad input."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from lesion_files import (
    NIFTI_AFFINE,
    NIFTI_SHAPE,
    NIFTI_SPACING,
    NIFTI_TAGS,
    nifti_labels,
    nifti_stored,
    raw_nifti,
    write_nifti,
    write_nifti_case,
)

from medmtl.data.lesion_geometry import recist_diameters_mm
from medmtl.data.lesion_nifti import LesionNiftiIndex, read_lesion_nifti
from medmtl.errors import InputError


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> tuple[Path, Path, Path]:
    return write_nifti_case(tmp_path_factory.mktemp("nifti"))


def test_image_spacing_affine(case):
    volume = read_lesion_nifti(*case)
    assert volume.image.dtype == np.float32 and volume.image.shape == NIFTI_SHAPE
    np.testing.assert_array_equal(volume.image, nifti_stored() - 1024.0)  # scl_inter applied
    np.testing.assert_allclose(volume.spacing, NIFTI_SPACING, rtol=1e-6)
    np.testing.assert_allclose(volume.affine, NIFTI_AFFINE, rtol=1e-6)
    assert volume.name == "case_img"


def test_instances_are_renumbered_in_label_order(case):
    volume = read_lesion_nifti(*case)
    labels = nifti_labels()
    assert volume.instances.dtype == np.int32
    np.testing.assert_array_equal(volume.instances, np.select([labels == 2, labels == 5], [1, 2], 0))
    assert volume.meta["label_ids"] == (2, 5)


def test_lesions_hand_computed(case):
    first, second = read_lesion_nifti(*case).lesions
    # Label 2: i 4..12, j 4..8, k 2..4, largest on k = 3: 9 px along i (8 x 0.8 + 0.8 mm), 5 along j
    # (4 x 0.9 + 0.9 mm); tags listed as [3, 0].
    np.testing.assert_array_equal(first.box, [4, 4, 2, 13, 9, 5])
    assert first.key_slice == 3 and first.tags == (0, 3)
    assert (first.long_axis_mm, first.short_axis_mm) == pytest.approx((7.2, 4.5))
    np.testing.assert_allclose(first.recist[:2], [[3.5, 6], [12.5, 6]])
    assert sorted(first.recist[2:].tolist()) == [[8, 3.5], [8, 8.5]]
    # Label 5: 6 px along j at i = 15 on k = 5; tags given as the single id 1.
    np.testing.assert_array_equal(second.box, [15, 10, 5, 16, 16, 6])
    assert second.key_slice == 5 and second.tags == (1,)
    assert (second.long_axis_mm, second.short_axis_mm) == pytest.approx((5.4, 0.8))
    assert recist_diameters_mm(second.recist, np.array(NIFTI_SPACING)) == pytest.approx((5.4, 0.8))


def test_tag_names(case):
    assert read_lesion_nifti(*case).tag_names == tuple(NIFTI_TAGS["tag_names"])


def test_image_alone_has_no_lesions(case):
    volume = read_lesion_nifti(case[0], name="scan")
    assert volume.lesions == () and not volume.instances.any() and volume.tag_names == ()
    assert volume.name == "scan" and volume.meta["label_ids"] == ()


def test_labels_without_tags_are_untagged(case):
    assert [lesion.tags for lesion in read_lesion_nifti(case[0], case[1]).lesions] == [(), ()]


def test_uncompressed_4d_and_float_labels(tmp_path):
    image = write_nifti(tmp_path / "img.nii", nifti_stored()[..., None])
    labels = write_nifti(tmp_path / "seg.nii", nifti_labels().astype(np.float32))
    volume = read_lesion_nifti(image, labels)
    assert volume.image.shape == NIFTI_SHAPE and len(volume.lesions) == 2
    np.testing.assert_array_equal(volume.image, nifti_stored())


def test_key_slice_tie_takes_the_first(tmp_path):
    labels = np.zeros(NIFTI_SHAPE, np.uint8)
    labels[2:5, 3, 1] = labels[2:5, 3, 4] = 1
    labels[3, 3, 2] = 1
    volume = read_lesion_nifti(
        write_nifti(tmp_path / "i.nii.gz", nifti_stored()), write_nifti(tmp_path / "l.nii.gz", labels)
    )
    (lesion,) = volume.lesions
    assert lesion.key_slice == 1
    np.testing.assert_array_equal(lesion.box, [2, 3, 1, 5, 4, 5])


def test_anisotropic_long_axis_in_mm(tmp_path):
    """6 px along i at 0.5 mm (3 mm) against 4 px along j at 2 mm (8 mm): the long axis runs along j."""
    labels = np.zeros((12, 12, 3), np.uint8)
    labels[3:9, 5, 1] = 1
    labels[5, 3:7, 1] = 1
    affine = np.diag([0.5, 2.0, 3.0, 1.0])
    image = write_nifti(tmp_path / "i.nii.gz", np.zeros((12, 12, 3), np.int16), affine)
    (lesion,) = read_lesion_nifti(image, write_nifti(tmp_path / "l.nii.gz", labels, affine)).lesions
    assert (lesion.long_axis_mm, lesion.short_axis_mm) == pytest.approx((8.0, 3.0))


# --- folder layout --------------------------------------------------------------------------------------


def _layout(root: Path, channel: str = "_0000", tags: dict[str, dict] | None = None) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    moved = nifti_labels()
    moved[15, 10:16, 5] = 0  # case2 holds label 2 only
    for case, labels in (("case1", nifti_labels()), ("case2", moved)):
        write_nifti(root / "imagesTr" / f"{case}{channel}.nii.gz", nifti_stored())
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", labels)
    for case, content in (tags if tags is not None else {"case1": NIFTI_TAGS}).items():
        (root / "labelsTr" / f"{case}.json").write_text(json.dumps(content))
    return root


@pytest.mark.parametrize("channel", ["_0000", ""])
def test_folder_layout(tmp_path, channel):
    index = LesionNiftiIndex(_layout(tmp_path, channel))
    assert index.names == ("case1", "case2") and len(index) == 2
    assert index.tag_names == tuple(NIFTI_TAGS["tag_names"])
    first, second = index[0], index[1]
    assert first.name == "case1" and [lesion.tags for lesion in first.lesions] == [(0, 3), (1,)]
    assert second.tag_names == index.tag_names and [lesion.tags for lesion in second.lesions] == [()]


def test_folder_without_labels(tmp_path):
    root = _layout(tmp_path)
    for path in (root / "labelsTr").iterdir():
        path.unlink()
    (root / "labelsTr").rmdir()
    (root / "imagesTr").rename(root / "imagesTs")
    index = LesionNiftiIndex(root, split="Ts")
    assert index[1].lesions == () and index.tag_names == ()


def _rm(*parts: str) -> Callable[[Path], None]:
    return lambda root: (root.joinpath(*parts)).unlink()


# name -> (edit of a good layout, the file or folder the error names (relative), words)
BAD_LAYOUTS: dict[str, tuple[Callable[[Path], object], str, tuple[str, ...]]] = {
    "no_images": (lambda root: (root / "imagesTr").rename(root / "images"), "imagesTr", ("no such folder",)),
    "missing_labels": (
        _rm("labelsTr", "case2.nii.gz"),
        "labelsTr/case2.nii.gz",
        ("every case needs labels",),
    ),
    "orphan_labels": (
        lambda root: write_nifti(root / "labelsTr" / "case3.nii.gz", nifti_labels()),
        "labelsTr/case3.nii.gz",
        ("has no image",),
    ),
    "second_channel": (
        lambda root: write_nifti(root / "imagesTr" / "case1_0001.nii.gz", nifti_stored()),
        "imagesTr/case1_0001.nii.gz",
        ("second channel",),
    ),
    "tag_names_differ": (
        lambda root: (root / "labelsTr" / "case2.json").write_text(json.dumps({"tag_names": ["x"]})),
        "labelsTr/case2.json",
        ("other `tag_names`",),
    ),
    "both_suffixes": (
        lambda root: write_nifti(root / "labelsTr" / "case1.nii", nifti_labels()),
        "labelsTr/case1.nii.gz",
        ("second file",),
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_LAYOUTS))
def test_bad_layout_gives_one_clear_error(tmp_path, name):
    edit, where, words = BAD_LAYOUTS[name]
    edit(_layout(tmp_path))
    with pytest.raises(InputError) as err:
        LesionNiftiIndex(tmp_path)
    assert err.value.where == str(tmp_path / where) and "\n" not in str(err.value)
    assert all(word in err.value.what for word in words), err.value.what


# --- one clear error per bad file -------------------------------------------------------------------------

_STORED = nifti_stored()


def _image(build: Callable[[Path], object]) -> Callable[[Path], tuple[Path, Path | None, Path | None]]:
    """A case whose image ``build`` writes at ``<dir>/img.nii.gz``; good labels and tags beside it."""

    def make(folder: Path):
        image, labels, tags = write_nifti_case(folder)
        image.unlink()
        build(image)
        return image, labels, tags

    return make


def _labels(build: Callable[[Path], object]) -> Callable[[Path], tuple[Path, Path | None, Path | None]]:
    def make(folder: Path):
        image, labels, tags = write_nifti_case(folder)
        labels.unlink()
        build(labels)
        return image, labels, tags

    return make


def _tags(content: object) -> Callable[[Path], tuple[Path, Path | None, Path | None]]:
    def make(folder: Path):
        image, labels, tags = write_nifti_case(folder)
        tags.write_text(json.dumps(content))
        return image, labels, tags

    return make


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _truncated(build: Callable[[Path], object]) -> Callable[[Path], object]:
    return lambda path: (build(path), _cut(path))


_raw_bytes = _STORED.astype("<i2").tobytes("F")
_shifted = NIFTI_AFFINE + np.array([[0, 0, 0, 5.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
_float_labels = nifti_labels().astype(np.float32)
_float_labels[8, 6, 3] = 2.5
_negative = nifti_labels().astype(np.int16)
_negative[0, 0, 0] = -1
_nan_image = _STORED.astype(np.float32)
_nan_image[1, 2, 3] = np.nan

# name -> (builder of (image, labels, tags), which file the error names, words it must contain)
BAD_FILES: dict[str, tuple[Callable[[Path], tuple], str, tuple[str, ...]]] = {
    "zero_zoom": (
        _image(lambda p: raw_nifti(p, NIFTI_SHAPE, "int16", _raw_bytes, zooms=(0.8, 0.0, 2.5))),
        "image",
        ("voxel size", "non-zero"),
    ),
    "nan_zoom": (
        _image(lambda p: raw_nifti(p, NIFTI_SHAPE, "int16", _raw_bytes, zooms=(np.nan, 0.9, 2.5))),
        "image",
        ("voxel size",),
    ),
    "image_2d": (_image(lambda p: write_nifti(p, _STORED[:, :, 0])), "image", ("is 2D", "3D volume")),
    "image_5d": (_image(lambda p: write_nifti(p, _STORED[..., None, None])), "image", ("is 5D",)),
    "complex": (
        _image(lambda p: write_nifti(p, _STORED.astype(np.complex64))),
        "image",
        ("complex64", "real"),
    ),
    "nan_image": (_image(lambda p: write_nifti(p, _nan_image)), "image", ("NaN",)),
    "truncated_gz": (_image(_truncated(lambda p: write_nifti(p, _STORED))), "image", ("truncated",)),
    "truncated_nii": (
        _image(lambda p: raw_nifti(p.with_name("img.nii"), NIFTI_SHAPE, "int16", _raw_bytes[:100])),
        "image_nii",
        ("truncated", "holds 100 of the 5040"),
    ),
    "corrupt_gz": (
        _image(lambda p: p.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)),
        "image",
        ("corrupt",),
    ),
    "not_nifti": (_image(lambda p: p.write_bytes(b"hello")), "image", ("not a readable NIfTI",)),
    "missing": (_image(lambda p: None), "image", ("no such file",)),
    "shape_mismatch": (
        _labels(lambda p: write_nifti(p, nifti_labels()[:, :, :6])),
        "labels",
        ("shape (20, 18, 6)",),
    ),
    "affine_mismatch": (
        _labels(lambda p: write_nifti(p, nifti_labels(), _shifted)),
        "labels",
        ("another affine",),
    ),
    "non_integer_labels": (
        _labels(lambda p: write_nifti(p, _float_labels)),
        "labels",
        ("non-integer", "2.5"),
    ),
    "negative_labels": (_labels(lambda p: write_nifti(p, _negative)), "labels", ("labels -1..5",)),
    "huge_label": (
        _labels(lambda p: write_nifti(p, nifti_labels().astype(np.int32) * 100_000)),
        "labels",
        ("0 (background) to 65535",),
    ),
    "unknown_instance": (
        _tags({"tag_names": ["a"], "instances": {"3": [0]}}),
        "tags",
        ("instance 3", "instances: 2, 5"),
    ),
    "tag_out_of_range": (_tags({"tag_names": ["a"], "instances": {"2": [0, 4]}}), "tags", ("tag id 4",)),
    "tags_not_list": (_tags({"tag_names": ["a"], "instances": {"2": "a"}}), "tags", ("list of tag ids",)),
    "tags_array": (_tags([1, 2]), "tags", ("expected an object",)),
    "uncertain_unknown_instance": (
        _tags({"tag_names": ["a"], "instances": {}, "uncertain": {"4": [0]}}),
        "tags",
        ("instance 4",),
    ),
    "tag_positive_and_uncertain": (
        _tags({"tag_names": ["a", "b"], "instances": {"2": [1]}, "uncertain": {"2": [0, 1]}}),
        "tags",
        ("lesion 2", "tag 1", "both"),
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_gives_one_clear_error(tmp_path, name):
    build, which, words = BAD_FILES[name]
    image, labels, tags = build(tmp_path)
    files = {"image": image, "labels": labels, "tags": tags, "image_nii": image.with_name("img.nii")}
    if which == "image_nii":
        image = files["image_nii"]
    with pytest.raises(InputError) as err:
        read_lesion_nifti(image, labels, tags)
    assert err.value.where == str(files[which]) and "\n" not in str(err.value)
    assert all(word in err.value.what for word in words), err.value.what


def test_uncertain_tags(tmp_path):
    image, labels, tags = write_nifti_case(tmp_path)
    tags.write_text(json.dumps({**NIFTI_TAGS, "uncertain": {"5": [2, 0]}}))
    first, second = read_lesion_nifti(image, labels, tags).lesions
    assert (first.tags, first.uncertain_tags) == ((0, 3), ())
    assert (second.tags, second.uncertain_tags) == ((1,), (0, 2))


def test_tags_without_labels(case):
    with pytest.raises(InputError, match="without a labels file"):
        read_lesion_nifti(case[0], None, case[2])


def test_declared_size_limit_is_checked_before_reading(tmp_path):
    path = raw_nifti(tmp_path / "huge.nii.gz", (32767, 32767, 32767), "int16", b"")
    with pytest.raises(InputError, match="above the limit"):
        read_lesion_nifti(path)


def test_spacing_comes_from_the_header_not_the_affine(tmp_path):
    """A file without sform/qform: nibabel's affine is built from the zooms, which give the spacing."""
    path = raw_nifti(tmp_path / "plain.nii", NIFTI_SHAPE, "int16", _raw_bytes, zooms=(0.5, 0.25, 3.0))
    volume = read_lesion_nifti(path)
    np.testing.assert_allclose(volume.spacing, (0.5, 0.25, 3.0))
    assert math.isclose(abs(np.linalg.det(volume.affine[:3, :3])), 0.375)
    assert nib.load(path).shape == NIFTI_SHAPE
