"""``Predictor.predict_volume``: the API that ONNX export, the DICOM script and the Slicer plugin build on."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_NET

from medmtl.errors import InputError
from medmtl.inference import Predictor, write_predictions
from medmtl.keys import MNI_CLASSES
from medmtl.models.recon_seg import ReconSegNet
from medmtl.transforms.coils import rss_image


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(ReconSegNet(**TINY_NET), MNI_CLASSES, batch_size=2)


def _volume(make_kspace, slices=3, coils=2, h=64, w=66):
    kspace, _ = make_kspace(9, slices, coils, h, w)
    return kspace


@pytest.mark.parametrize("mask_shape", ["1d", "row", "2d"])
def test_shapes_dtypes_and_progress(predictor, make_kspace, mask_shape):
    kspace = _volume(make_kspace)
    column = np.zeros(66, np.float32)
    column[::3] = 1
    column[30:36] = 1
    mask = {"1d": column, "row": column[None], "2d": np.repeat(column[None], 64, axis=0)}[mask_shape]
    done = []
    recon, seg = predictor.predict_volume(kspace, mask, progress=done.append)
    assert recon.shape == seg.shape == (3, 64, 66)
    assert recon.dtype == np.float32 and seg.dtype == np.uint8
    assert done == [2, 1]


def test_masks_fully_sampled_input_itself(predictor, make_kspace):
    kspace = _volume(make_kspace, slices=1)
    mask = np.zeros(66, np.float32)
    mask[::2] = 1
    mask[31:35] = 1
    full, _ = predictor.predict_volume(kspace, mask)
    pre_masked, _ = predictor.predict_volume(kspace * mask, mask)
    np.testing.assert_allclose(full, pre_masked, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kspace_shape", "mask", "words"),
    [
        ((2, 64, 66), np.ones(66), "(S, C, H, W) complex"),
        ((1, 2, 64, 66), np.ones(65), "length 65"),
        ((1, 2, 64, 66), np.ones((3, 66)), "expected"),
        ((1, 2, 64, 66), np.r_[np.ones(33), np.zeros(33)][::-1].copy(), "centre"),
    ],
)
def test_bad_inputs_raise_input_error(predictor, kspace_shape, mask, words):
    kspace = np.ones(kspace_shape, np.complex64)
    mask = mask.copy()
    if words == "centre":
        mask[33] = 0  # DC column unsampled
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        predictor.predict_volume(kspace, mask)


def test_all_zero_slice_names_the_slice(predictor, make_kspace):
    kspace = _volume(make_kspace, slices=2)
    kspace[1] = 0
    with pytest.raises(InputError, match="slice 1"):
        predictor.predict_volume(kspace, np.ones(66))


def test_write_predictions_refuses_to_replace_kspace(tmp_path, make_kspace):
    from medmtl.io.kspace import write_kspace_h5

    src = write_kspace_h5(tmp_path / "scan.h5", _volume(make_kspace, slices=1))
    with pytest.raises(InputError, match="never overwrite"):
        write_predictions(src, np.zeros((1, 64, 66)), np.zeros((1, 64, 66)), MNI_CLASSES)


def test_reconstruction_only_network_runs_but_does_not_predict(make_kspace):
    torch.manual_seed(0)
    recon_only = Predictor(ReconSegNet(**(TINY_NET | {"mode": "recon"})), (), require_segmentation=False)
    kspace = _volume(make_kspace, slices=2)
    mask = np.ones(66, np.float32)
    recon, seg = recon_only.run(kspace, mask)
    assert recon.shape == (2, 64, 66) and seg is None
    with pytest.raises(InputError, match="no segmentation task"):
        recon_only.predict_volume(kspace, mask)
    with pytest.raises(InputError, match="no segmentation task"):
        Predictor(ReconSegNet(**(TINY_NET | {"mode": "recon"})), ())


class _MirrorEquivariant(torch.nn.Module):
    """Zero-filled RSS image and a per-pixel threshold segmentation of it: both commute with mirroring the
    k-space and mask about the centre index, so mirror TTA must return the single pass."""

    tasks = ("recon", "seg")

    def forward(self, kspace, mask, acs_mask):
        image = rss_image(kspace * mask)
        logits = torch.stack([image.median() - image, image - image.median(), 0 * image], dim=1)
        return SimpleNamespace(recon=image, seg_logits=logits)


@pytest.mark.parametrize("mask_shape", ["1d", "2d"])
@pytest.mark.parametrize("size", [(64, 66), (63, 67)])
def test_mirror_tta_of_a_mirror_equivariant_network_is_its_single_pass(make_kspace, mask_shape, size):
    h, w = size
    kspace = _volume(make_kspace, slices=2, h=h, w=w)
    rng = np.random.default_rng(0)
    # Neither mask is its own mirror, so a view that mirrors k-space but not the mask gives another image.
    mask = np.zeros(w, np.float32)
    mask[1::3] = 1
    mask[w // 2 - 3 : w // 2 + 2] = 1
    if mask_shape == "2d":
        mask = (rng.random((h, w)) < 0.4).astype(np.float32)
        mask[h // 2 - 4 : h // 2 + 3, w // 2 - 4 : w // 2 + 3] = 1
    single = Predictor(_MirrorEquivariant(), MNI_CLASSES, batch_size=2).predict_volume(kspace, mask)
    tta = Predictor(_MirrorEquivariant(), MNI_CLASSES, batch_size=2, tta=True).predict_volume(kspace, mask)
    np.testing.assert_allclose(tta[0], single[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(tta[1], single[1])


def test_mirror_tta_of_a_network_averages_three_views(predictor, make_kspace):
    kspace = _volume(make_kspace)
    mask = np.zeros(66, np.float32)
    mask[1::3] = 1
    mask[30:36] = 1
    tta = Predictor(predictor.model, MNI_CLASSES, batch_size=2, tta=True)
    done = []
    recon, seg = tta.predict_volume(kspace, mask, progress=done.append)
    assert recon.shape == seg.shape == (3, 64, 66) and done == [2, 1]
    single, _ = predictor.predict_volume(kspace, mask)
    assert not np.allclose(recon, single)  # the network is not mirror-equivariant
