import numpy as np
import pytest
import torch

import medmtl.transforms.masks as masks
from medmtl.errors import ConfigError, InputError
from medmtl.keys import Keys
from medmtl.transforms.masks import (
    PATTERNS,
    PATTERNS_1D,
    RandKSpaceMask,
    RandKSpaceMaskd,
    make_mask,
    measured_acceleration,
)


def _centre_block(pattern, shape, cf):
    h, w = shape
    nh = 1 if pattern in PATTERNS_1D else round(cf * h)
    nw = round(cf * w)
    ys = slice(0, 1) if pattern in PATTERNS_1D else slice(h // 2 - nh // 2, h // 2 - nh // 2 + nh)
    return ys, slice(w // 2 - nw // 2, w // 2 - nw // 2 + nw)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("shape", [(64, 64), (37, 97), (48, 640), (640, 64)])
@pytest.mark.parametrize(("acc", "cf"), [(2, 0.16), (4, 0.08), (6, 0.08), (8, 0.04), (12, 0.08)])
def test_measured_acceleration_and_centre(pattern, shape, acc, cf):
    mask = make_mask(pattern, shape, acc, cf, np.random.default_rng(3))
    expected_rows = 1 if pattern in PATTERNS_1D else shape[0]
    assert mask.shape == (expected_rows, shape[1])
    assert mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert abs(measured_acceleration(mask) / acc - 1) <= 0.10
    assert mask[_centre_block(pattern, shape, cf)].all()
    assert mask[expected_rows // 2, shape[1] // 2] == 1  # DC


@pytest.mark.parametrize("pattern", PATTERNS)
def test_seeded_masks_repeat_and_differ(pattern):
    a = make_mask(pattern, (40, 50), 4, 0.08, np.random.default_rng(7))
    b = make_mask(pattern, (40, 50), 4, 0.08, np.random.default_rng(7))
    c = make_mask(pattern, (40, 50), 4, 0.08, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_tiny_centre_still_samples_dc(pattern):
    mask = make_mask(pattern, (10, 12), 2, 0.01, np.random.default_rng(0))
    rows = mask.shape[0]
    assert mask[rows // 2, 6] == 1
    assert make_mask(pattern, (10, 12), 2, 0.0, np.random.default_rng(0)).sum() == round(rows * 12 / 2)


def test_accepts_monai_randomstate():
    a = make_mask("random", (1, 64), 4, 0.08, np.random.RandomState(0))
    b = make_mask("random", (1, 64), 4, 0.08, np.random.RandomState(0))
    np.testing.assert_array_equal(a, b)


def test_equispaced_gaps_differ_by_at_most_one():
    mask = make_mask("equispaced", (1, 300), 5, 0.0, np.random.default_rng(0))[0]
    gaps = np.diff(np.flatnonzero(mask))
    assert gaps.max() - gaps.min() <= 1


def test_gaussian_densities_favour_the_centre():
    for pattern in ("gaussian1d", "gaussian2d"):
        total = np.zeros((64, 64))
        for seed in range(20):
            total += np.broadcast_to(
                make_mask(pattern, (64, 64), 6, 0.0, np.random.default_rng(seed)), (64, 64)
            )
        inner, outer = total[:, 24:40].mean(), np.concatenate([total[:, :8], total[:, -8:]], 1).mean()
        assert inner > 2 * outer


def _nearest_neighbour_distances(mask):
    pts = np.argwhere(mask > 0)
    dist = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    return pts, dist.min(1)


def test_poisson_keeps_a_minimum_distance_that_grows_outwards():
    pts, nn = _nearest_neighbour_distances(make_mask("poisson2d", (64, 64), 8, 0.0, np.random.default_rng(0)))
    assert nn.min() >= np.sqrt(2) - 1e-9  # no two samples are direct neighbours
    rho = np.sqrt(((pts - 32) ** 2).sum(1)) / 32
    assert nn[rho > 0.8].mean() > 1.3 * nn[rho < 0.4].mean()
    _, nn_gauss = _nearest_neighbour_distances(
        make_mask("gaussian2d", (64, 64), 8, 0.0, np.random.default_rng(0))
    )
    assert nn_gauss.min() == 1  # the check above can fail


def test_poisson_retries_when_the_run_saturates(monkeypatch):
    monkeypatch.setattr(masks, "_RSA_MARGIN", 0.3)  # start with discs too large to reach the count
    mask = make_mask("poisson2d", (48, 40), 4, 0.08, np.random.default_rng(0))
    assert mask.sum() == round(48 * 40 / 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(pattern="spiral"), "unknown pattern"),
        (dict(acceleration=0.5), "acceleration"),
        (dict(center_fraction=1.5), "center fraction"),
        (dict(acceleration=10, center_fraction=0.3), "lower the centre fraction"),
        (dict(shape=(0, 8)), "shape"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(pattern="random", shape=(16, 32), acceleration=4, center_fraction=0.08, rng=0) | kwargs
    with pytest.raises(ConfigError, match=match):
        make_mask(**args)


def test_all_zero_mask_is_an_input_error():
    with pytest.raises(InputError, match="all zero"):
        measured_acceleration(np.zeros((1, 8)))


def _kspace(c=3, h=20, w=33, seed=0):
    return torch.randn(c, h, w, 2, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("pattern", "rows"), [("random", 1), ("poisson2d", 20)])
def test_array_transform(pattern, rows):
    t = RandKSpaceMask(pattern, accelerations=(4, 8), center_fractions=(0.08, 0.04)).set_random_state(0)
    kspace = _kspace()
    masked, mask, acc = t(kspace)
    assert mask.shape == (1, rows, 33, 1) and mask.dtype == torch.float32
    assert acc in (4.0, 8.0)
    torch.testing.assert_close(masked, kspace * mask)
    assert (masked[:, :, mask[0, 0, :, 0] == 0] == 0).all() if rows == 1 else True


def test_array_transform_draws_pairs():
    t = RandKSpaceMask("random", accelerations=(4, 8), center_fractions=(0.08, 0.04)).set_random_state(0)
    seen = set()
    for _ in range(30):
        _, mask, acc = t(_kspace(w=100))
        centre = int(mask[0, 0, 45:55, 0].sum())  # 8 % -> 8 lines, 4 % -> 4 lines in the centre 10
        seen.add((acc, centre >= 8))
    assert seen == {(4.0, True), (8.0, False)}


def test_array_transform_rejects_mismatched_lists_and_bad_kspace():
    with pytest.raises(ConfigError, match="same length"):
        RandKSpaceMask(accelerations=(4, 8), center_fractions=(0.08,))
    with pytest.raises(InputError, match=r"\(C, H, W, 2\)"):
        RandKSpaceMask()(torch.zeros(4, 4, 4))


def test_dict_transform_is_reproducible_and_writes_keys():
    sample = {Keys.KSPACE: _kspace()}
    a = RandKSpaceMaskd(pattern="equispaced").set_random_state(5)(sample)
    b = RandKSpaceMaskd(pattern="equispaced").set_random_state(5)(sample)
    torch.testing.assert_close(a[Keys.MASK], b[Keys.MASK])
    torch.testing.assert_close(a[Keys.KSPACE], sample[Keys.KSPACE] * a[Keys.MASK])
    assert a[Keys.ACCELERATION].shape == () and float(a[Keys.ACCELERATION]) == 4.0


def test_dict_transform_keeps_a_stored_mask():
    stored = torch.zeros(1, 1, 33, 1)
    stored[..., ::3, :] = 1
    out = RandKSpaceMaskd()({Keys.KSPACE: _kspace(), Keys.MASK: stored})
    torch.testing.assert_close(out[Keys.MASK], stored)
    assert float(out[Keys.ACCELERATION]) == pytest.approx(33 / 11)
    redrawn = RandKSpaceMaskd(keep_existing_mask=False).set_random_state(0)(
        {Keys.KSPACE: _kspace(), Keys.MASK: stored}
    )
    assert not torch.equal(redrawn[Keys.MASK], stored)


def test_fixed_seed_depends_only_on_file_and_slice():
    t = RandKSpaceMaskd(pattern="random", fixed_seed=11)
    t.set_random_state(0)

    def mask(fname, idx):
        return t({Keys.KSPACE: _kspace(), Keys.FNAME: fname, Keys.SLICE: idx})[Keys.MASK]

    first = mask("a.h5", 3)
    t.set_random_state(99)
    assert torch.equal(first, mask("a.h5", 3))
    assert not torch.equal(first, mask("a.h5", 4)) or not torch.equal(first, mask("b.h5", 3))
    with pytest.raises(InputError, match="fixed_seed"):
        t({Keys.KSPACE: _kspace()})
