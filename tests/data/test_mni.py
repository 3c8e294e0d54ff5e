"""The MNI152 template from nilearn: offline loading, shapes, the label rule, slices and the default split."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from medmtl.data import mni
from medmtl.errors import ConfigError
from medmtl.keys import MNI_CLASSES

SHAPE = (197, 233, 189)


@pytest.fixture(scope="module")
def template() -> mni.MNITemplate:
    return mni.load_template()


def test_loads_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the template must not touch the network")

    mni.load_template.cache_clear()
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    t = mni.load_template()
    assert t.image.shape == t.labels.shape == SHAPE
    assert t.image.dtype == np.float32 and t.labels.dtype == np.uint8
    assert t.image.min() == 0 and t.image.max() == 1
    # RAS+, 1 mm voxels: the axis convention the module documents.
    assert np.allclose(np.diag(t.affine)[:3], 1.0)
    assert mni.load_template() is t  # cached


def test_cached_arrays_are_read_only(template):
    with pytest.raises(ValueError):
        template.labels[0, 0, 0] = 1


def test_label_rule_edges():
    p_gm = np.array([0.6, 0.6, 0.5, 0.2, 0.5, 0.9, 0.0])
    p_wm = np.array([0.6, 0.3, 0.51, 0.9, 0.5, 0.95, 0.0])
    # tie above 0.5 -> GM; GM only; WM wins by a hair; WM; both at 0.5 -> other; WM larger; nothing.
    assert mni.tissue_labels(p_gm, p_wm).tolist() == [1, 1, 2, 2, 0, 2, 0]


def test_template_labels_are_tissue(template):
    labels, image = template.labels, template.image
    assert set(np.unique(labels).tolist()) == set(range(len(MNI_CLASSES)))
    gm, wm = image[labels == 1].mean(), image[labels == 2].mean()
    # T1 contrast: white matter is brighter than grey matter; both are tens of thousands of voxels.
    assert wm > gm > image[labels == 0].mean()
    assert (labels == 1).sum() > 1e5 and (labels == 2).sum() > 1e5


@pytest.mark.parametrize(
    "orientation, index, expected_hw",
    [("sagittal", 98, (233, 189)), ("coronal", 0, (197, 189)), ("axial", 188, (197, 233))],
)
def test_extract_slices_follow_array_axes(template, orientation, index, expected_hw):
    images, labels = mni.extract_slices(orientation, (index, 5))
    assert images.shape == labels.shape == (2, *expected_hw)
    picked = [slice(None)] * 3
    picked[mni.slice_axis(orientation)] = index
    np.testing.assert_array_equal(images[0], template.image[tuple(picked)])
    np.testing.assert_array_equal(labels[0], template.labels[tuple(picked)])
    assert mni.num_slices(orientation) == SHAPE[mni.slice_axis(orientation)]


@pytest.mark.parametrize(
    "spec, expected",
    [("3:5", (3, 4)), ("10:12,11:14", (10, 11, 12, 13)), (":2", (0, 1)), ("187:", (187, 188))],
)
def test_parse_slices(spec, expected):
    assert mni.parse_slices(spec, "axial") == expected


@pytest.mark.parametrize("spec", ["10", "a:b", "12:10", "5:5", "0:190", "-1:5", "3:4,"])
def test_parse_slices_rejects(spec):
    with pytest.raises(ConfigError, match="slices"):
        mni.parse_slices(spec, "axial")


def test_unknown_orientation():
    with pytest.raises(ConfigError, match="orientation"):
        mni.slice_axis("oblique")


@pytest.mark.parametrize("orientation", mni.ORIENTATIONS)
def test_default_split_is_disjoint_and_has_brain(template, orientation):
    train = mni.split_slices(orientation, "train")
    val = mni.split_slices(orientation, "val")
    assert train and val and not set(train) & set(val)
    # Nearby slices are near copies: at least 5 slices between any training and validation slice.
    assert min(abs(t - v) for t in train for v in val) > 5
    axis = mni.slice_axis(orientation)
    other = tuple(a for a in range(3) if a != axis)
    area = (template.labels > 0).sum(axis=other)
    assert (area[list(train + val)] > 0.25 * area.max()).all()
    if orientation == "sagittal":  # the template is left-right symmetric: x and 196 - x are mirror images
        assert not {SHAPE[0] - 1 - v for v in val} & set(train)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"num_coils": 0}, "num_coils"),
        ({"num_coils": 2.5}, "num_coils"),
        ({"noise_level": -0.1}, "noise_level"),
        ({"noise_level": float("nan")}, "noise_level"),
        ({"accelerations": (4, 8), "center_fractions": (0.08,)}, "same length"),
        ({"accelerations": (0.5,)}, ">= 1"),
        ({"center_fractions": (1.5,)}, "center_fractions"),
        ({"mask": "spiral"}, "spiral"),
        ({"size": (32, 64)}, "size"),
        ({"size": (64, 641)}, "size"),
    ],
)
def test_simulation_options_reject(kwargs, word):
    with pytest.raises(ConfigError, match=word):
        mni.SimulationOptions(**kwargs)


def test_simulation_options_coerce_lists():
    options = mni.SimulationOptions(accelerations=[4, 8], center_fractions=[0.08, 0.04], size=[64, 96])
    assert options.accelerations == (4.0, 8.0) and options.size == (64, 96)
    assert hash(options) == hash(
        mni.SimulationOptions(accelerations=(4, 8), center_fractions=(0.08, 0.04), size=(64, 96))
    )
