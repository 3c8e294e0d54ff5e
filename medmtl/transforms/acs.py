"""The auto-calibration (ACS) region of a sampling mask: the fully sampled block around DC.

This loops over data-dependent sizes, so it runs in the data pipeline, outside any exported graph.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Transform

from medmtl.errors import ConfigError, InputError
from medmtl.keys import Keys


def _run_lengths(rows: np.ndarray) -> np.ndarray:
    """Per column, how many of ``rows`` (ordered away from DC) are sampled before the first gap. (n, W) -> (W,)."""
    return np.cumprod(rows, axis=0).sum(axis=0) if rows.size else np.zeros(rows.shape[1], dtype=np.int64)


def _acs_box(mask2d: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), inclusive, of the calibration rectangle of ``mask2d``; None if DC is not sampled.

    Among the fully sampled rectangles that contain DC, it takes the one whose worse axis covers the largest
    fraction of k-space, min(height / H, width / W), and among those the largest area. Pure largest area can
    trade a square centre block for a thin strip along one sampled line, which calibrates badly. For a 1D
    mask (one row) this is the run of sampled lines through DC; for a 1D mask repeated over the rows, those
    columns over all rows.

    A rectangle [t, b] x [l, r] through DC is fully sampled iff every column j in [l, r] is sampled at the DC
    row and its sampled run reaches up to t and down to b, so with ``up[j]`` and ``down[j]`` the run lengths
    from the DC row, the tallest rectangle over columns [l, r] has height min(up) + min(down) + 1. The search
    runs over the O(W^2) column intervals, vectorised over r.
    """
    h, w = mask2d.shape
    cy, cx = h // 2, w // 2
    if not mask2d[cy, cx]:
        return None
    m = mask2d.astype(np.int64)
    up = _run_lengths(m[cy - 1 :: -1] if cy > 0 else m[:0])
    down = _run_lengths(m[cy + 1 :])
    left_run = int(np.cumprod(m[cy, cx::-1]).sum())  # the DC row's run bounds the columns
    right_run = int(np.cumprod(m[cy, cx:]).sum())
    # running minima outwards from DC: *_l[i] over columns cx-i..cx, *_r[k] over cx..cx+k
    up_l = np.minimum.accumulate(up[cx - left_run + 1 : cx + 1][::-1])
    down_l = np.minimum.accumulate(down[cx - left_run + 1 : cx + 1][::-1])
    up_r = np.minimum.accumulate(up[cx : cx + right_run])
    down_r = np.minimum.accumulate(down[cx : cx + right_run])
    best, box = (-1.0, -1), None
    for i in range(left_run):
        u, dn = np.minimum(up_l[i], up_r), np.minimum(down_l[i], down_r)
        height, width = u + dn + 1, i + np.arange(right_run) + 1
        cover = np.minimum(height / h, width / w)
        area = height * width
        k = int(np.lexsort((area, cover))[-1])
        if (cover[k], area[k]) > best:
            best, box = (float(cover[k]), int(area[k])), (cy - int(u[k]), cy + int(dn[k]), cx - i, cx + k)
    return box


def acs_mask_from_mask(mask: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """The ACS region of ``mask``, in the mask's own shape, type and dtype.

    Args:
        mask: (1, Hm, W, 1) as in ``Keys.MASK``, or (Hm, W); any non-zero value counts as sampled.

    Returns:
        1 inside the ACS region, 0 elsewhere; all zero when DC itself is not sampled.
    """
    is_tensor = isinstance(mask, torch.Tensor)
    arr = mask.detach().cpu().numpy() if is_tensor else np.asarray(mask)
    if arr.ndim == 4 and arr.shape[0] == 1 and arr.shape[-1] == 1:
        mask2d = arr[0, :, :, 0]
    elif arr.ndim == 2:
        mask2d = arr
    else:
        raise InputError("mask", f"expected a mask of shape (1, Hm, W, 1) or (Hm, W), got {arr.shape}")
    acs2d = np.zeros(mask2d.shape, dtype=arr.dtype)
    box = _acs_box(mask2d != 0)
    if box is not None:
        t, b, lft, r = box
        acs2d[t : b + 1, lft : r + 1] = 1
    out = acs2d.reshape(arr.shape)
    return torch.from_numpy(out).to(mask.device) if is_tensor else out


class EstimateACS(Transform):
    """``mask`` (1, Hm, W, 1) -> its ACS region (1, Hm, W, 1); see ``acs_mask_from_mask``."""

    def __call__(self, mask: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        return acs_mask_from_mask(mask)


class EstimateACSd(MapTransform):
    """Writes the ACS region of each mask key (default ``Keys.MASK``) under ``acs_key`` (default ``Keys.ACS``).

    With several mask keys, pass as many ``acs_key`` names in the same order.
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable] = Keys.MASK,
        acs_key: Hashable | Sequence[Hashable] = Keys.ACS,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.acs_keys = (acs_key,) if isinstance(acs_key, str) else tuple(acs_key)
        if len(self.acs_keys) != len(self.keys):
            raise ConfigError("EstimateACSd", f"{len(self.keys)} mask keys but {len(self.acs_keys)} acs keys")
        self.estimate = EstimateACS()

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key, acs_key in self.key_iterator(d, self.acs_keys):
            d[acs_key] = self.estimate(d[key])
        return d
