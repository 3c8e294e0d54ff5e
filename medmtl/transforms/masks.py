"""Undersampling masks along the phase-encode axis (W, the last image axis) and their MONAI transforms.

Every pattern samples a fully sampled centre and then exactly ``round(H_m * W / acceleration)`` elements in
all, so the measured acceleration (elements / sampled) equals the request up to one element of rounding.
That is a design choice: fastMRI's equispaced mask adds its centre on top of an ``acceleration``-spaced grid
and so undershoots the request (4x with 8 % centre measures about 3.2x).

1D patterns (mask shape (1, W), one flag per phase-encode line):
    ``equispaced``  the non-centre lines on a grid of spacing (W - n_centre) / n_outer with a random offset;
                    the spacing is generally not an integer, so neighbouring gaps differ by one line.
    ``random``      the non-centre lines drawn uniformly without replacement.
    ``gaussian1d``  the non-centre lines drawn without replacement with a Gaussian density around DC.
2D patterns (mask shape (H, W), one flag per k-space element, for 2D phase encoding):
    ``gaussian2d``  elements drawn without replacement with a 2D Gaussian density.
    ``poisson2d``   variable-density Poisson disc: random sequential adsorption with a minimum distance that
                    grows linearly from the centre out, stopped at the exact count.
The centre is ``round(center_fraction * W)`` lines for 1D masks and a ``round(center_fraction * H)`` by
``round(center_fraction * W)`` rectangle for 2D masks (at least one line per axis when the fraction is not
zero), both around DC at index (H // 2, W // 2).
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable, Transform

from medmtl.errors import ConfigError, InputError
from medmtl.keys import Keys

PATTERNS_1D = ("equispaced", "random", "gaussian1d")
PATTERNS_2D = ("gaussian2d", "poisson2d")
PATTERNS = PATTERNS_1D + PATTERNS_2D
# fastMRI's 4x with an 8 % centre
DEFAULT_PATTERN = "equispaced"
DEFAULT_ACCELERATIONS = (4.0,)
DEFAULT_CENTER_FRACTIONS = (0.08,)

# Standard deviation of the Gaussian densities, in units of the k-space half-width.
_GAUSS_SIGMA = 0.35
# Poisson disc: the minimum distance at normalised radius rho is d0 * (1 + _POISSON_SLOPE * rho).
_POISSON_SLOPE = 1.0
# Random sequential adsorption of discs jams at about 0.70 * area / d^2 points; aiming the jammed count this
# far above the requested one means the run reaches the count before it saturates.
_RSA_JAM = 0.70
_RSA_MARGIN = 1.25
_RSA_SHRINK = 0.85

Rng = np.random.Generator | np.random.RandomState


def _as_rng(rng: Rng | int | None) -> Rng:
    if isinstance(rng, np.random.Generator | np.random.RandomState):
        return rng
    return np.random.default_rng(rng)


def _centre_slice(n: int, n_centre: int) -> slice:
    # DC of a centred FFT sits at n // 2; an even run has one more line on the negative side, like fftshift.
    start = n // 2 - n_centre // 2
    return slice(start, start + n_centre)


def _centre_count(n: int, center_fraction: float) -> int:
    # at least DC whenever a centre is asked for, so small matrices keep a calibration region
    return max(round(center_fraction * n), 1) if center_fraction > 0 else 0


def _weighted_pick(weights: np.ndarray, n: int, rng: Rng) -> np.ndarray:
    """Indices of ``n`` of ``weights`` drawn without replacement, each with probability ~ weight.

    Efraimidis-Spirakis: the ``n`` smallest keys -log(u) / w. Exact count and vectorised.
    """
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    keys = -np.log(1.0 - rng.random(weights.size)) / weights
    return np.argpartition(keys, n - 1)[:n]


def _rho_1d(w: int) -> np.ndarray:
    return np.abs(np.arange(w) - w // 2) / (w / 2)


def _rho_2d(h: int, w: int) -> np.ndarray:
    ry = (np.arange(h) - h // 2) / (h / 2)
    rx = (np.arange(w) - w // 2) / (w / 2)
    return np.sqrt(ry[:, None] ** 2 + rx[None, :] ** 2)


def _gauss(rho: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * (rho / _GAUSS_SIGMA) ** 2)


def _equispaced(outer: np.ndarray, n: int, rng: Rng) -> np.ndarray:
    """``n`` positions equispaced (up to rounding) over the list of non-centre lines ``outer``."""
    if n <= 0:
        return outer[:0]
    spacing = outer.size / n
    positions = np.floor(rng.uniform(0.0, spacing) + spacing * np.arange(n)).astype(np.int64)
    return outer[np.minimum(positions, outer.size - 1)]


def _disc(radius_q: int) -> np.ndarray:
    """Boolean stencil of the points closer than ``radius_q / 4`` pixels to its centre."""
    r = radius_q / 4.0
    k = int(np.ceil(r))
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1]
    return yy**2 + xx**2 < r**2


def _poisson_run(cand_y, cand_x, radius_q, shape, n) -> np.ndarray | None:
    """Random sequential adsorption over the candidates in the given order; None if it saturates first."""
    h, w = shape
    blocked = np.zeros(shape, dtype=bool)
    stencils: dict[int, np.ndarray] = {}
    chosen: list[int] = []
    for y, x, rq in zip(cand_y, cand_x, radius_q):
        if blocked[y, x]:
            continue
        chosen.append(y * w + x)
        if len(chosen) == n:
            return np.asarray(chosen, dtype=np.int64)
        if rq <= 4:  # a radius of at most one pixel blocks only the point itself, which is never revisited
            continue
        st = stencils.get(rq)
        if st is None:
            st = stencils[rq] = _disc(rq)
        k = st.shape[0] // 2
        y0, y1, x0, x1 = max(y - k, 0), min(y + k + 1, h), max(x - k, 0), min(x + k + 1, w)
        blocked[y0:y1, x0:x1] |= st[y0 - y + k : y1 - y + k, x0 - x + k : x1 - x + k]
    return None


def _poisson(outer_flat: np.ndarray, shape: tuple[int, int], n: int, rng: Rng) -> np.ndarray:
    if n <= 0:
        return outer_flat[:0]
    order = outer_flat[rng.permutation(outer_flat.size)]
    cand_y, cand_x = np.divmod(order, shape[1])
    growth = 1.0 + _POISSON_SLOPE * _rho_2d(*shape)[cand_y, cand_x]
    # a disc of diameter d per sample jams at _RSA_JAM / d^2 samples per pixel; sum that over the candidates
    d0 = float(np.sqrt(_RSA_JAM * np.sum(growth**-2.0) / (_RSA_MARGIN * n)))
    cand_y, cand_x = cand_y.tolist(), cand_x.tolist()
    while True:  # ends: once d0 * max(growth) <= 1 nothing blocks, and n <= len(outer_flat)
        radius_q = np.round(4.0 * d0 * growth).astype(np.int64).tolist()
        chosen = _poisson_run(cand_y, cand_x, radius_q, shape, n)
        if chosen is not None:
            return chosen
        d0 *= _RSA_SHRINK


def make_mask(
    pattern: str,
    shape: Sequence[int],
    acceleration: float,
    center_fraction: float,
    rng: Rng | int | None = None,
) -> np.ndarray:
    """One undersampling mask.

    Args:
        pattern: one of ``PATTERNS``.
        shape: (H, W) of the k-space to mask; W is the phase-encode axis.
        acceleration: requested elements / sampled, >= 1.
        center_fraction: fully sampled centre as a fraction of each axis (see the module docstring), in [0, 1].
        rng: numpy ``Generator`` or ``RandomState`` (MONAI's ``self.R``), a seed, or None.

    Returns:
        (1, W) float32 for 1D patterns, (H, W) float32 for 2D patterns, with values 0 and 1.
    """
    if pattern not in PATTERNS:
        raise ConfigError("mask", f"unknown pattern {pattern!r}; choose one of {', '.join(PATTERNS)}")
    if len(shape) != 2 or min(shape) < 1:
        raise ConfigError("mask", f"shape must be (H, W) with positive sizes, got {tuple(shape)}")
    if not acceleration >= 1:
        raise ConfigError("mask", f"acceleration must be >= 1, got {acceleration}")
    if not 0 <= center_fraction <= 1:
        raise ConfigError("mask", f"center fraction must be in [0, 1], got {center_fraction}")
    rng = _as_rng(rng)
    h, w = (1, int(shape[1])) if pattern in PATTERNS_1D else (int(shape[0]), int(shape[1]))
    mask = np.zeros((h, w), dtype=np.float32)
    centre = (
        _centre_slice(h, _centre_count(h, center_fraction)) if h > 1 else slice(0, 1),
        _centre_slice(w, _centre_count(w, center_fraction)),
    )
    mask[centre] = 1.0
    n_centre = int(mask.sum())
    n_total = max(round(h * w / acceleration), 1)
    if n_centre > n_total:
        raise ConfigError(
            "mask",
            f"a centre fraction of {center_fraction} samples {n_centre} of {h * w} elements, more than "
            f"acceleration {acceleration} allows ({n_total}); lower the centre fraction",
        )
    n_outer = n_total - n_centre
    outer = np.flatnonzero(mask.ravel() == 0)
    if pattern == "equispaced":
        picked = _equispaced(outer, n_outer, rng)
    elif pattern == "random":
        picked = outer[_weighted_pick(np.ones(outer.size), n_outer, rng)]
    elif pattern == "gaussian1d":
        picked = outer[_weighted_pick(_gauss(_rho_1d(w))[outer], n_outer, rng)]
    elif pattern == "gaussian2d":
        picked = outer[_weighted_pick(_gauss(_rho_2d(h, w)).ravel()[outer], n_outer, rng)]
    else:
        picked = _poisson(outer, (h, w), n_outer, rng)
    mask.ravel()[picked] = 1.0
    return mask


def measured_acceleration(mask: torch.Tensor | np.ndarray) -> float:
    """Elements / sampled elements of a mask of any shape; raises ``InputError`` for an all-zero mask."""
    mask = torch.as_tensor(mask)
    sampled = float((mask != 0).sum())
    if sampled == 0:
        raise InputError("mask", "the mask samples nothing (all zero)")
    return mask.numel() / sampled


def _as_kspace(kspace: torch.Tensor | np.ndarray, where: str) -> torch.Tensor:
    kspace = torch.as_tensor(kspace)
    if kspace.ndim != 4 or kspace.shape[-1] != 2:
        raise InputError(where, f"expected k-space of shape (C, H, W, 2), got {tuple(kspace.shape)}")
    return kspace


class RandKSpaceMask(Randomizable, Transform):
    """Undersample multi-coil k-space with a random mask.

    Each call draws one (acceleration, centre fraction) pair, by index, from the paired lists (as fastMRI
    does) and a fresh mask of ``pattern`` for the k-space's (H, W).

    ``__call__(kspace)``: kspace (C, H, W, 2) -> (masked kspace (C, H, W, 2), mask (1, Hm, W, 1) float32,
    acceleration float), with Hm = 1 for 1D patterns and H for 2D ones.
    """

    def __init__(
        self,
        pattern: str = DEFAULT_PATTERN,
        accelerations: Sequence[float] | float = DEFAULT_ACCELERATIONS,
        center_fractions: Sequence[float] | float = DEFAULT_CENTER_FRACTIONS,
    ):
        self.accelerations = tuple(np.atleast_1d(accelerations).tolist())
        self.center_fractions = tuple(np.atleast_1d(center_fractions).tolist())
        if len(self.accelerations) != len(self.center_fractions) or not self.accelerations:
            raise ConfigError(
                "RandKSpaceMask",
                f"accelerations {self.accelerations} and center fractions {self.center_fractions} "
                "must be non-empty lists of the same length (they are drawn in pairs)",
            )
        if pattern not in PATTERNS:
            raise ConfigError("RandKSpaceMask", f"unknown pattern {pattern!r}; choose one of {PATTERNS}")
        self.pattern = pattern
        self._mask: torch.Tensor | None = None
        self._acceleration = 0.0

    def draw(self, shape: Sequence[int], rng: Rng) -> tuple[torch.Tensor, float]:
        """A mask (1, Hm, W, 1) float32 for k-space of spatial shape (H, W) and its acceleration, from ``rng``."""
        i = min(int(rng.random() * len(self.accelerations)), len(self.accelerations) - 1)
        acc, cf = self.accelerations[i], self.center_fractions[i]
        mask = make_mask(self.pattern, shape, acc, cf, rng)
        return torch.from_numpy(mask)[None, :, :, None], float(acc)

    def randomize(self, data: Sequence[int]) -> None:
        """``data``: the (H, W) to draw a mask for."""
        self._mask, self._acceleration = self.draw(data, self.R)

    def __call__(
        self, kspace: torch.Tensor | np.ndarray, randomize: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        kspace = _as_kspace(kspace, "RandKSpaceMask")
        if randomize or self._mask is None:
            self.randomize(kspace.shape[1:3])
        mask = self._mask.to(kspace.dtype)
        return kspace * mask, mask, self._acceleration


class RandKSpaceMaskd(Randomizable, MapTransform):
    """Dictionary twin of ``RandKSpaceMask``: masks every key in ``keys`` with one mask per call.

    Writes the masked k-space under each key, the mask under ``mask_key`` and the acceleration under
    ``Keys.ACCELERATION`` (a 0-dim float32 tensor).

    Args:
        keep_existing_mask: when the sample already has ``mask_key`` (a file's stored mask, DESIGN.md), apply
            that mask instead of drawing one, and record its measured acceleration if none is present.
        fixed_seed: when set, the mask of a sample depends only on this seed and the sample's
            (``Keys.FNAME``, ``Keys.SLICE``), so validation sees the same masks every epoch.
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable] = Keys.KSPACE,
        mask_key: Hashable = Keys.MASK,
        pattern: str = DEFAULT_PATTERN,
        accelerations: Sequence[float] | float = DEFAULT_ACCELERATIONS,
        center_fractions: Sequence[float] | float = DEFAULT_CENTER_FRACTIONS,
        keep_existing_mask: bool = True,
        fixed_seed: int | None = None,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.masker = RandKSpaceMask(pattern, accelerations, center_fractions)
        self.mask_key = mask_key
        self.keep_existing_mask = keep_existing_mask
        self.fixed_seed = fixed_seed

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.masker.set_random_state(seed, state)
        return self

    def randomize(self, data: Sequence[int]) -> None:
        self.masker.randomize(data)

    def _sample_rng(self, d: Mapping) -> np.random.Generator:
        if Keys.FNAME not in d or Keys.SLICE not in d:
            raise InputError(
                "RandKSpaceMaskd",
                f"fixed_seed needs {Keys.FNAME.value!r} and {Keys.SLICE.value!r} in the sample",
            )
        # crc32, not hash(): Python salts str hashes per process, which would break determinism across workers.
        fname = zlib.crc32(str(d[Keys.FNAME]).encode())
        return np.random.default_rng((self.fixed_seed, fname, int(d[Keys.SLICE])))

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        shape = _as_kspace(d[keys[0]], "RandKSpaceMaskd").shape[1:3]
        if self.keep_existing_mask and self.mask_key in d:
            mask = torch.as_tensor(d[self.mask_key], dtype=torch.float32)
            acc = float(d[Keys.ACCELERATION]) if Keys.ACCELERATION in d else measured_acceleration(mask)
        elif self.fixed_seed is not None:
            mask, acc = self.masker.draw(shape, self._sample_rng(d))
        else:
            self.randomize(shape)
            mask, acc = self.masker._mask, self.masker._acceleration
        for key in keys:
            kspace = _as_kspace(d[key], "RandKSpaceMaskd")
            d[key] = kspace * mask.to(kspace.dtype)
        d[self.mask_key] = mask
        d[Keys.ACCELERATION] = torch.tensor(acc, dtype=torch.float32)
        return d
