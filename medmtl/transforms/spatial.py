"""Centre crop, and zero pad to a size divisible by N, of k-space samples in the image domain.

k-space is brought to the image (``ifft2c``), cropped or padded there, and taken back (``fft2c``); image-domain
keys (target, segmentation, coil maps) are cropped or padded alike, so the sample stays consistent. Index
``n // 2`` (DC of the centred FFT, the image centre) stays at ``new // 2``.

Physics: cropping or padding the image along an axis resamples k-space along that axis, so every new k-space
line mixes old ones. Along the readout axis H that is harmless after a 1D mask, which is the same on every
row. Along the phase-encode axis W, or along H under a 2D mask, it mixes sampled and unsampled lines and the
mask no longer describes the data. So along those axes crop/pad fully sampled data, before
``RandKSpaceMaskd``; the dictionary transforms raise ``InputError`` when a mask in the sample says otherwise.
A mask that is the same along the changed axis (all ones, or 1D along H) is resized with the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Transform

from medmtl.errors import ConfigError, InputError
from medmtl.fft import fft2c, ifft2c
from medmtl.keys import Keys

SizeRule = Callable[[int, int], int]  # (axis index 0 = H or 1 = W, old size) -> new size


def center_crop_or_pad(x: torch.Tensor, size: Sequence[int], dims: Sequence[int]) -> torch.Tensor:
    """Crop or zero pad ``x`` along ``dims`` to ``size``, keeping index n // 2 at new // 2."""
    for dim, new in zip(dims, size):
        old = x.shape[dim]
        if new < old:
            x = x.narrow(dim, old // 2 - new // 2, new)
        elif new > old:
            before = new // 2 - old // 2
            pad = [0, 0] * (x.ndim - 1 - dim % x.ndim) + [before, new - old - before]
            x = F.pad(x, pad)
    return x


def _resize_kspace(kspace: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(..., H, W, 2) k-space -> (..., h, w, 2), by cropping or padding its image."""
    if tuple(kspace.shape[-3:-1]) == tuple(size):
        return kspace
    return fft2c(center_crop_or_pad(ifft2c(kspace), size, (-3, -2)))


def _resize_mask(mask: torch.Tensor, size: Sequence[int], where: str, key: str) -> torch.Tensor:
    """(1, Hm, W, 1) mask -> the mask of the resized data; InputError if the data it masks cannot be resized."""
    for dim, new, axis in ((1, size[0], "H (readout)"), (2, size[1], "W (phase encode)")):
        old = mask.shape[dim]
        if (old == 1 and dim == 1) or old == new:
            continue  # a 1D mask is the same for every row, whatever H is
        first = mask.narrow(dim, 0, 1)
        if not torch.equal(mask, first.expand_as(mask)):
            raise InputError(
                where,
                f"cannot crop or pad axis {axis} from {old} to {new}: {key} samples it partially, and resizing the "
                "image along it would mix sampled and unsampled k-space lines; crop or pad before masking "
                "(before RandKSpaceMaskd)",
            )
        shape = list(mask.shape)
        shape[dim] = new
        mask = first.expand(shape).contiguous()
    return mask


def _as_kspace(kspace, where: str) -> torch.Tensor:
    kspace = torch.as_tensor(kspace)
    if kspace.ndim < 3 or kspace.shape[-1] != 2:
        raise InputError(where, f"expected k-space of shape (..., H, W, 2), got {tuple(kspace.shape)}")
    return kspace


class _KSpaceResize(Transform):
    """k-space (..., H, W, 2) -> resized k-space; with ``mask`` (1, Hm, W, 1), checks the physics first."""

    def __init__(self, rule: SizeRule, name: str):
        self.rule, self.name = rule, name

    def new_size(self, shape: Sequence[int]) -> tuple[int, int]:
        return self.rule(0, int(shape[0])), self.rule(1, int(shape[1]))

    def __call__(self, kspace, mask: torch.Tensor | None = None) -> torch.Tensor:
        kspace = _as_kspace(kspace, self.name)
        size = self.new_size(kspace.shape[-3:-1])
        if mask is not None:
            _resize_mask(torch.as_tensor(mask), size, self.name, "the mask")
        return _resize_kspace(kspace, size)


class _KSpaceResized(MapTransform):
    """Resizes k-space ``keys``, image-domain ``image_keys`` (..., H, W), ``pair_keys`` (..., H, W, 2) and
    ``mask_keys`` (1, Hm, W, 1) of a sample together. Each key gets the rule applied to its own size, so a
    target stored at a different size from the k-space (fastMRI knee: 320 x 320 against 640 x 368) is
    cropped to the same crop size. Absent image, pair and mask keys are skipped.
    """

    def __init__(self, array: _KSpaceResize, keys, image_keys, pair_keys, mask_keys, allow_missing_keys):
        super().__init__(keys, allow_missing_keys)
        self.array = array
        self.image_keys, self.pair_keys, self.mask_keys = (
            tuple(image_keys),
            tuple(pair_keys),
            tuple(mask_keys),
        )

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        name = self.array.name
        for key in self.mask_keys:  # first, so nothing is resized when the physics forbids it
            if key in d:
                mask = torch.as_tensor(d[key])
                if mask.ndim != 4:
                    raise InputError(
                        name, f"expected {key!s} of shape (1, Hm, W, 1), got {tuple(mask.shape)}"
                    )
                d[key] = _resize_mask(mask, self.array.new_size(mask.shape[1:3]), name, str(key))
        for key in self.key_iterator(d):
            kspace = _as_kspace(d[key], name)
            d[key] = _resize_kspace(kspace, self.array.new_size(kspace.shape[-3:-1]))
        for keys, dims in ((self.image_keys, (-2, -1)), (self.pair_keys, (-3, -2))):
            for key in keys:
                if key in d:
                    x = torch.as_tensor(d[key])
                    d[key] = center_crop_or_pad(x, self.array.new_size([x.shape[i] for i in dims]), dims)
        return d


def _crop_rule(size: Sequence[int | None]) -> SizeRule:
    if len(size) != 2 or any(s is not None and s != -1 and s < 1 for s in size):
        raise ConfigError(
            "KSpaceCenterCrop", f"size must be (h, w) with positive entries, -1 or None, got {size}"
        )
    return lambda axis, old: old if size[axis] in (None, -1) else min(old, int(size[axis]))


def _divisible_rule(k: int | Sequence[int]) -> SizeRule:
    k = tuple(np.broadcast_to(np.asarray(k, dtype=np.int64), (2,)).tolist())
    if min(k) < 1:
        raise ConfigError("KSpaceDivisiblePad", f"k must be positive, got {k}")
    return lambda axis, old: math.ceil(old / k[axis]) * k[axis]


_DEFAULT_IMAGE_KEYS = (Keys.TARGET, Keys.SEG, Keys.IMAGE, Keys.LABEL)
_DEFAULT_PAIR_KEYS = (Keys.SENS,)
_DEFAULT_MASK_KEYS = (Keys.MASK, Keys.ACS)


class KSpaceCenterCrop(_KSpaceResize):
    """Centre crop of the image of k-space (..., H, W, 2) to at most ``size`` = (h, w); -1 or None keeps an axis.

    ``__call__(kspace, mask=None)``; with a mask, raises ``InputError`` if the crop would break it.
    """

    def __init__(self, size: Sequence[int | None]):
        super().__init__(_crop_rule(size), "KSpaceCenterCrop")


class KSpaceCenterCropd(_KSpaceResized):
    """Dictionary twin of ``KSpaceCenterCrop``; see ``_KSpaceResized`` for the keys."""

    def __init__(
        self,
        size: Sequence[int | None],
        keys: Hashable | Sequence[Hashable] = Keys.KSPACE,
        image_keys: Sequence[Hashable] = _DEFAULT_IMAGE_KEYS,
        pair_keys: Sequence[Hashable] = _DEFAULT_PAIR_KEYS,
        mask_keys: Sequence[Hashable] = _DEFAULT_MASK_KEYS,
        allow_missing_keys: bool = False,
    ):
        super().__init__(KSpaceCenterCrop(size), keys, image_keys, pair_keys, mask_keys, allow_missing_keys)


class KSpaceDivisiblePad(_KSpaceResize):
    """Zero pad of the image of k-space (..., H, W, 2) so that H and W are multiples of ``k`` (int or (kH, kW)).

    ``__call__(kspace, mask=None)``; with a mask, raises ``InputError`` if the padding would break it.
    """

    def __init__(self, k: int | Sequence[int]):
        super().__init__(_divisible_rule(k), "KSpaceDivisiblePad")


class KSpaceDivisiblePadd(_KSpaceResized):
    """Dictionary twin of ``KSpaceDivisiblePad``; see ``_KSpaceResized`` for the keys."""

    def __init__(
        self,
        k: int | Sequence[int],
        keys: Hashable | Sequence[Hashable] = Keys.KSPACE,
        image_keys: Sequence[Hashable] = _DEFAULT_IMAGE_KEYS,
        pair_keys: Sequence[Hashable] = _DEFAULT_PAIR_KEYS,
        mask_keys: Sequence[Hashable] = _DEFAULT_MASK_KEYS,
        allow_missing_keys: bool = False,
    ):
        super().__init__(KSpaceDivisiblePad(k), keys, image_keys, pair_keys, mask_keys, allow_missing_keys)
