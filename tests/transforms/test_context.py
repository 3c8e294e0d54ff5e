"""2.5D context sampling: positions, linear interpolation along k, edge clamping, the dict transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medmtl.errors import ConfigError, InputError
from medmtl.transforms.context import SampleContextd, context_positions, sample_context


def ramp_volume(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A volume linear in k with a random offset and slope per pixel: a + b * k, exact under linear
    interpolation. -> (volume (I, J, K) float64, a (I, J), b (I, J))."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=shape[:2]), rng.normal(size=shape[:2])
    return a[..., None] + b[..., None] * np.arange(shape[2]), a, b


def test_hand_computed_2p5_to_2mm():
    # 2.5 mm slices, 2 mm interval: steps of 0.8 slice around key slice 5 of 12.
    volume = np.random.default_rng(1).normal(size=(3, 4, 12)).astype(np.float32)
    context = sample_context(volume, 2.5, 5, num_slices=9, interval_mm=2.0)
    v = volume
    expected = [
        0.2 * v[..., 1] + 0.8 * v[..., 2],  # 1.8
        0.4 * v[..., 2] + 0.6 * v[..., 3],  # 2.6
        0.6 * v[..., 3] + 0.4 * v[..., 4],  # 3.4
        0.8 * v[..., 4] + 0.2 * v[..., 5],  # 4.2
        v[..., 5],  # 5.0, the key slice in the middle
        0.2 * v[..., 5] + 0.8 * v[..., 6],  # 5.8
        0.4 * v[..., 6] + 0.6 * v[..., 7],  # 6.6
        0.6 * v[..., 7] + 0.4 * v[..., 8],  # 7.4
        0.8 * v[..., 8] + 0.2 * v[..., 9],  # 8.2
    ]
    assert context.shape == (9, 3, 4) and context.dtype == np.float32
    np.testing.assert_allclose(context, np.stack(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key_slice", [0, 1, 6, 10])
def test_edges_repeat_the_end_slices(key_slice):
    volume, _, _ = ramp_volume((2, 3, 11))
    context = sample_context(volume, 1.0, key_slice, num_slices=9, interval_mm=2.0)
    positions = np.clip(key_slice + 2 * np.arange(-4, 5), 0, 10)  # whole slices at 1 mm
    np.testing.assert_allclose(context, np.moveaxis(volume[..., positions], -1, 0), atol=1e-12)
    if key_slice == 0:
        assert all(np.array_equal(context[s], volume[..., 0]) for s in range(5))


@pytest.mark.parametrize(
    ("shape", "spacing", "key_slice", "num_slices", "interval"),
    [
        ((7, 5, 13), 2.5, 6, 9, 2.0),
        ((1, 9, 4), 0.7, 2.5, 5, 2.0),  # fractional key, thin slices
        ((6, 1, 30), 5.0, 29, 3, 2.0),  # thick slices, last slice
        ((3, 3, 9), 1.25, 4, 1, 2.0),  # one slice: the key slice
        ((4, 5, 20), 1.5, 11, 7, 3.3),
    ],
)
def test_linear_in_k_is_exact(shape, spacing, key_slice, num_slices, interval):
    volume, a, b = ramp_volume(shape)
    context = sample_context(volume, spacing, key_slice, num_slices, interval)
    offsets = (np.arange(num_slices) - num_slices // 2) * interval / spacing
    positions = np.clip(key_slice + offsets, 0, shape[2] - 1)
    assert context.shape == (num_slices, *shape[:2])
    np.testing.assert_allclose(context, a + b * positions[:, None, None], atol=1e-9)
    np.testing.assert_allclose(
        context_positions(key_slice, shape[2], spacing, num_slices, interval), positions
    )


def test_single_slice_volume_repeats_it():
    volume = np.random.default_rng(2).normal(size=(5, 3, 1)).astype(np.float32)
    context = sample_context(volume, 3.0, 0)
    assert context.shape == (9, 5, 3)
    assert all(np.array_equal(c, volume[..., 0]) for c in context)


def test_torch_matches_numpy_and_keeps_dtype():
    volume = np.random.default_rng(3).normal(size=(6, 7, 15)).astype(np.float32)
    expected = sample_context(volume, 2.5, 7.3)
    got = sample_context(torch.from_numpy(volume), 2.5, 7.3)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    ints = np.arange(2 * 2 * 5, dtype=np.int16).reshape(2, 2, 5)
    assert np.issubdtype(sample_context(ints, 2.5, 2).dtype, np.floating)
    assert sample_context(torch.from_numpy(ints), 2.5, 2).dtype.is_floating_point


@pytest.mark.parametrize("num_slices", [0, 2, 8, -3, 2.5])
def test_even_or_bad_num_slices_rejected(num_slices):
    with pytest.raises(ConfigError, match="num_slices"):
        sample_context(np.zeros((2, 2, 5)), 1.0, 2, num_slices=num_slices)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"interval_mm": 0.0}, ConfigError, "interval_mm"),
        ({"interval_mm": float("nan")}, ConfigError, "interval_mm"),
        ({"spacing_mm": 0.0}, InputError, "spacing"),
        ({"key_slice": 5}, InputError, "outside"),
        ({"key_slice": -0.5}, InputError, "outside"),
    ],
)
def test_bad_values_rejected(kwargs, error, words):
    args = {"volume": np.zeros((2, 2, 5)), "spacing_mm": 1.0, "key_slice": 2} | kwargs
    with pytest.raises(error, match=words):
        sample_context(**args)


def test_needs_three_axes():
    with pytest.raises(InputError, match=r"\(I, J, K\)"):
        sample_context(np.zeros((1, 2, 2, 5)), 1.0, 2)


def test_dict_transform_reads_spacing_from_the_affine():
    volume, _, _ = ramp_volume((4, 6, 14))
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    data = {"image": MetaTensor(torch.from_numpy(volume), affine=torch.from_numpy(affine)), "slice_idx": 6}
    out = SampleContextd(keys="image")(data)
    expected = sample_context(volume, 2.5, 6)
    assert type(out["image"]) is torch.Tensor  # no stale 3D affine on a 2.5D stack
    np.testing.assert_allclose(out["image"].numpy(), expected, atol=1e-12)
    assert out["slice_idx"] == 6 and isinstance(data["image"], MetaTensor)  # the input dict is untouched


def test_dict_transform_on_plain_arrays_needs_a_spacing():
    volume, _, _ = ramp_volume((3, 3, 10))
    out = SampleContextd(keys="v", slice_key="k", num_slices=3, spacing_mm=1.0)({"v": volume, "k": 4})
    np.testing.assert_allclose(out["v"], np.moveaxis(volume[..., [2, 4, 6]], -1, 0))
    with pytest.raises(InputError, match="spacing_mm"):
        SampleContextd(keys="v", slice_key="k")({"v": volume, "k": 4})
    with pytest.raises(ConfigError):
        SampleContextd(keys="v", num_slices=4)
