import numpy as np
import pytest
import torch

from medmtl.errors import ConfigError, InputError
from medmtl.keys import Keys
from medmtl.transforms.acs import EstimateACS, EstimateACSd, acs_mask_from_mask
from medmtl.transforms.masks import PATTERNS, PATTERNS_1D, make_mask


def test_1d_run_through_dc():
    mask = np.zeros((1, 21), np.float32)
    mask[0, [1, 5, 8, 9, 10, 11, 12, 15]] = 1  # DC is column 10; run 8..12, the 15 is not contiguous
    acs = acs_mask_from_mask(mask)
    np.testing.assert_array_equal(np.flatnonzero(acs[0]), [8, 9, 10, 11, 12])


def test_shape_type_and_dtype_follow_the_input():
    mask = torch.zeros(1, 1, 16, 1)
    mask[..., 6:11, :] = 1
    acs = acs_mask_from_mask(mask)
    assert isinstance(acs, torch.Tensor) and acs.shape == mask.shape and acs.dtype == mask.dtype
    torch.testing.assert_close(acs, mask)


def test_2d_rectangle():
    mask = np.zeros((15, 12), np.float32)
    mask[5:11, 4:9] = 1  # DC (7, 6) inside
    mask[0, :] = 1  # sampled elsewhere, not touching
    mask[5, 9] = 1  # half an edge column, cannot grow into it
    expected = np.zeros_like(mask)
    expected[5:11, 4:9] = 1
    np.testing.assert_array_equal(acs_mask_from_mask(mask), expected)


def test_broadcast_1d_mask_gives_full_columns():
    mask = np.zeros((9, 20), np.float32)
    mask[:, 8:13] = 1
    np.testing.assert_array_equal(acs_mask_from_mask(mask), mask)


def test_dc_not_sampled_gives_empty():
    mask = np.ones((1, 10), np.float32)
    mask[0, 5] = 0
    assert acs_mask_from_mask(mask).sum() == 0


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("shape", [(33, 40), (64, 51)])
def test_contains_the_centre_of_every_pattern(pattern, shape):
    mask = make_mask(pattern, shape, 4, 0.1, np.random.default_rng(0))
    acs = acs_mask_from_mask(mask)
    assert (mask[acs > 0] == 1).all()
    h, w = mask.shape
    nh = 1 if pattern in PATTERNS_1D else round(0.1 * h)
    nw = round(0.1 * w)
    assert acs[h // 2 - nh // 2 : h // 2 - nh // 2 + nh, w // 2 - nw // 2 : w // 2 - nw // 2 + nw].all()


def test_bad_shape():
    with pytest.raises(InputError, match="shape"):
        acs_mask_from_mask(np.ones((2, 3, 4)))


def test_dict_transform():
    mask = torch.zeros(1, 1, 16, 1)
    mask[..., 7:10, :] = 1
    mask[..., 2, :] = 1
    out = EstimateACSd()({Keys.MASK: mask})
    assert out[Keys.ACS].sum() == 3
    torch.testing.assert_close(out[Keys.ACS], EstimateACS()(mask))
    with pytest.raises(ConfigError):
        EstimateACSd(keys=(Keys.MASK, "other_mask"), acs_key=Keys.ACS)


def test_prefers_a_block_to_a_larger_thin_strip():
    mask = np.zeros((16, 16), np.float32)
    mask[6:10, 6:10] = 1
    mask[8:10, :] = 1  # a 2 x 16 strip through DC has twice the block's area
    expected = np.zeros_like(mask)
    expected[6:10, 6:10] = 1
    np.testing.assert_array_equal(acs_mask_from_mask(mask), expected)
