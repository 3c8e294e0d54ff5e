"""Simulate fully sampled multi-coil k-space from a real 2D image (DESIGN.md "Default data").

For an image x (H, W) the simulator draws, from its MONAI random state:

- coil sensitivities S_c (C, H, W): each coil sits at a random point on an ellipse just outside the field of
  view, around the object. Its magnitude falls off like the on-axis field of a current loop,
  (1 + d^2 / w^2)^(-3/2) with d the distance to the coil and w a random coil radius, and its phase is that of
  the in-plane Biot-Savart field of a wire at the coil (the angle of the vector from the coil) plus a random
  constant. The maps are then divided by sqrt(sum_c |S_c|^2), so sum_c |S_c|^2 = 1 at every pixel and the
  coil-combined (RSS or SENSE) image of the noise-free data is exactly |x|.
- a smooth image phase: a random quadratic in the normalised coordinates (y, x in about [-1, 1]).
- complex Gaussian noise added in k-space, with standard deviation ``noise_level`` times the RMS of the
  noise-free k-space over all coils and samples (by Parseval also the RMS of the coil images over the field of
  view), split evenly between the real and imaginary parts.

The target is the magnitude of the clean image, |x|, without noise: the reconstruction learns to denoise as well
as to de-alias. Distances are in units of half the larger matrix side, so the maps look the same at any matrix
size; pixels are taken as square.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import NamedTuple

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, Transform

from medmtl.data.mni import SimulationOptions
from medmtl.errors import ConfigError
from medmtl.fft import fft2c
from medmtl.keys import Keys

DEFAULT_PHASE_SCALE = math.pi / 4

# Coils sit at rho times the half-sides of the matrix: rho >= sqrt(2) keeps them outside its corners, so the
# wire phase has no singularity inside the image.
_COIL_DISTANCE = (1.45, 1.8)
_COIL_RADIUS = (0.4, 0.8)  # in units of half the larger matrix side


class SimulatedKSpace(NamedTuple):
    """``kspace``: (C, H, W, 2) float32 fully sampled; ``sens_maps``: (C, H, W, 2) float32; ``target``:
    (H, W) float32, the clean magnitude |x|."""

    kspace: torch.Tensor
    sens_maps: torch.Tensor
    target: torch.Tensor


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (H, W) each, in units of half the larger side, centred on the matrix."""
    half = max(height, width) / 2.0
    y = (np.arange(height) - (height - 1) / 2.0) / half
    x = (np.arange(width) - (width - 1) / 2.0) / half
    return np.meshgrid(y.astype(np.float32), x.astype(np.float32), indexing="ij")


def _plain_tensor(array: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A torch tensor without MONAI metadata (a MetaTensor would carry it into k-space)."""
    return array.as_tensor() if isinstance(array, MetaTensor) else torch.as_tensor(array)


class SimulateMultiCoil(Randomizable, Transform):
    """Image (1, H, W) real -> ``SimulatedKSpace`` with fresh coil maps, image phase and noise on each call.

    Args:
        num_coils: number of receive coils C (>= 1).
        noise_level: k-space noise standard deviation relative to the RMS of the noise-free k-space (>= 0).
        phase_scale: bound, in radians, of each coefficient of the quadratic image phase (>= 0).
    """

    def __init__(
        self,
        num_coils: int = SimulationOptions.num_coils,
        noise_level: float = SimulationOptions.noise_level,
        phase_scale: float = DEFAULT_PHASE_SCALE,
    ):
        if int(num_coils) < 1:
            raise ConfigError("num_coils", f"must be at least 1, got {num_coils}")
        if not noise_level >= 0:  # also rejects NaN
            raise ConfigError("noise_level", f"must be >= 0, got {noise_level}")
        if not phase_scale >= 0:
            raise ConfigError("phase_scale", f"must be >= 0, got {phase_scale}")
        self.num_coils = int(num_coils)
        self.noise_level = float(noise_level)
        self.phase_scale = float(phase_scale)
        self._sens: torch.Tensor | None = None  # (C, H, W) complex64
        self._phase: torch.Tensor | None = None  # (H, W) float32, radians
        self._noise_seed = 0

    def randomize(self, data: tuple[int, int]) -> None:
        """Draw maps, phase and a noise seed for an (H, W) image. ``data``: the shape (H, W)."""
        height, width = data
        y, x = _grid(height, width)
        half_y, half_x = height / max(height, width), width / max(height, width)
        c = self.num_coils
        angles = self.R.uniform(0, 2 * np.pi) + 2 * np.pi * (np.arange(c) + self.R.uniform(-0.2, 0.2, c)) / c
        rho = self.R.uniform(*_COIL_DISTANCE, c)
        radius = self.R.uniform(*_COIL_RADIUS, c)
        offset = self.R.uniform(0, 2 * np.pi, c)
        dy = y[None] - (rho * half_y * np.cos(angles)).astype(np.float32)[:, None, None]
        dx = x[None] - (rho * half_x * np.sin(angles)).astype(np.float32)[:, None, None]
        magnitude = (1.0 + (dy**2 + dx**2) / radius.astype(np.float32)[:, None, None] ** 2) ** -1.5
        magnitude /= np.sqrt((magnitude**2).sum(axis=0, keepdims=True))
        angle = np.arctan2(dy, dx) + offset.astype(np.float32)[:, None, None]
        self._sens = torch.polar(torch.from_numpy(magnitude), torch.from_numpy(angle))

        coeff = self.R.uniform(-self.phase_scale, self.phase_scale, 6)
        self._phase = torch.from_numpy(
            coeff[0] + coeff[1] * y + coeff[2] * x + coeff[3] * y * y + coeff[4] * x * y + coeff[5] * x * x
        ).float()
        # The noise itself comes from a torch generator seeded here: numpy's legacy normal sampler is several
        # times slower, and this keeps every draw reproducible from the transform's random state.
        self._noise_seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, img: torch.Tensor | np.ndarray, randomize: bool = True) -> SimulatedKSpace:
        """``img``: (1, H, W) real (intensity units are kept). ``randomize=False`` reuses the last draw."""
        image = _plain_tensor(img)
        if image.ndim != 3 or image.shape[0] != 1:
            raise ConfigError("image", f"expected shape (1, H, W), got {tuple(image.shape)}")
        image = image[0].to(torch.float32)
        if randomize or self._sens is None or self._sens.shape[1:] != image.shape:
            self.randomize(tuple(image.shape))
        x = torch.polar(image.abs(), self._phase + torch.where(image < 0, torch.pi, 0.0))
        kspace = fft2c(torch.view_as_real(self._sens * x))  # (C, H, W, 2)
        if self.noise_level > 0:
            rms = kspace.square().sum(-1).mean().sqrt()
            generator = torch.Generator().manual_seed(self._noise_seed)
            noise = torch.randn(kspace.shape, generator=generator, dtype=kspace.dtype)
            kspace = kspace + (self.noise_level * rms / math.sqrt(2.0)) * noise
        return SimulatedKSpace(kspace=kspace, sens_maps=torch.view_as_real(self._sens), target=image.abs())


class SimulateMultiCoild(Randomizable, MapTransform):
    """Dictionary twin of ``SimulateMultiCoil``.

    Reads the one key in ``keys`` (an image (1, H, W)) and, when present, ``label_key`` (1, H, W); writes ``Keys.KSPACE``
    (C, H, W, 2) fully sampled, ``Keys.SENS`` (C, H, W, 2), ``Keys.TARGET`` (H, W) clean magnitude and, from the
    label, ``Keys.SEG`` (H, W) int64. The inputs stay in the dict.
    """

    def __init__(
        self,
        keys: KeysCollection = Keys.IMAGE,
        label_key: str = Keys.LABEL,
        num_coils: int = SimulationOptions.num_coils,
        noise_level: float = SimulationOptions.noise_level,
        phase_scale: float = DEFAULT_PHASE_SCALE,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ConfigError("keys", f"SimulateMultiCoild simulates one image key, got {list(self.keys)}")
        self.label_key = label_key
        self.simulator = SimulateMultiCoil(
            num_coils=num_coils, noise_level=noise_level, phase_scale=phase_scale
        )

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.simulator.set_random_state(state=self.R)
        return self

    def randomize(self, data: tuple[int, int]) -> None:
        self.simulator.randomize(data)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            sim = self.simulator(d[key])
            d[Keys.KSPACE], d[Keys.SENS], d[Keys.TARGET] = sim
            if self.label_key in d:
                label = _plain_tensor(d[self.label_key]).to(torch.float32)
                d[Keys.SEG] = label.reshape(label.shape[-2:]).round().to(torch.int64)
        return d
