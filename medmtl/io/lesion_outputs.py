"""The files of lesion inference (``medmtl lesion``), each written atomically (``atomic_path``):

- ``write_findings_json``: ``{"findings": [...]}`` (DESIGN.md, "Lesion findings");
- ``write_instance_nifti``: the instance-label volume, int32, with the input's affine and header (its
  sform/qform, units and extensions), or for a DICOM input the series' affine (sform and qform, scanner
  space, mm); scaling is reset, the intent set to NIfTI's "label", and the display range to the labels'
  range. Always gzip-compressed, as ``.nii.gz``;
- ``save_finding_png``: one finding on its key slice, the whole slice and a close-up, with its box, its mask's
  contour and its three likeliest tags. Rows are ``i`` and columns ``j``, as the array is stored (no
  radiological flip: the picture shows what the voxel indices say).
"""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from medmtl.errors import InputError
from medmtl.io.atomic import atomic_path
from medmtl.lesion_findings import Finding, VolumeFindings

_TOP_TAGS = 3
# The close-up shows the box with this much margin on each side (times its extent), at least _MIN_VIEW_PX.
_MARGIN, _MIN_VIEW_PX = 1.0, 32
_BOX_COLOUR, _MASK_COLOUR = "tab:orange", "tab:cyan"
_GZIP_LEVEL = 6
_QFORM_ATOL = 1e-3  # off-orthogonality of an affine's unit columns still written as a qform  # labels are mostly zeros; higher levels only cost time


def write_findings_json(path: str | os.PathLike, result: VolumeFindings) -> Path:
    """Write ``result.to_json()`` to ``path``. Returns the path."""
    path = Path(path)
    # One finding per line: readable, and a diff shows which findings changed.
    findings = [json.dumps(f, allow_nan=False) for f in result.to_json()["findings"]]
    text = (
        '{"findings": [\n' + ",\n".join(f"  {f}" for f in findings) + "\n]}\n"
        if findings
        else '{"findings": []}\n'
    )
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_instance_nifti(
    path: str | os.PathLike,
    labels: np.ndarray,
    reference: str | os.PathLike | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """Write ``labels`` (I, J, K) as an int32 NIfTI with the geometry and header of the NIfTI ``reference``
    (see the module docstring), whose shape must be ``reference``'s (I, J, K); or, without a reference
    (a DICOM series), with ``affine`` (4, 4) voxel -> RAS+ mm. Returns the path."""
    labels = np.asarray(labels, np.int32)
    if reference is None:
        if affine is None:
            raise ValueError("write_instance_nifti needs a reference NIfTI or an affine")
        affine = np.asarray(affine, np.float64)
        image = nib.Nifti1Image(labels, affine)
        image.header.set_xyzt_units("mm")
        image.set_sform(affine, code=1)
        # The qform holds rotations and zooms only: a sheared affine (a tilted CT gantry) lives in the sform
        # alone, so that no reader places the labels by a qform that lost the shear.
        # Headers round positions and cosines (the DICOM reader accepts 1e-3), so an untilted series is
        # orthogonal to that tolerance, and nibabel stores the nearest rotation in the qform.
        columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
        orthogonal = np.allclose(columns.T @ columns, np.eye(3), atol=_QFORM_ATOL)
        image.set_qform(affine if orthogonal else None, code=1 if orthogonal else 0)
    else:
        try:
            ref = nib.load(os.fspath(reference))
        except Exception as err:  # nibabel raises many types for damaged files
            raise InputError(reference, f"cannot be read as a NIfTI reference ({err})") from err
        if not isinstance(ref, (nib.Nifti1Image, nib.Nifti2Image)) or tuple(ref.shape[:3]) != labels.shape:
            raise InputError(
                reference, f"is no single-file NIfTI of shape {labels.shape} to take the geometry from"
            )
        image = type(ref)(labels, ref.affine, header=ref.header.copy())
    image.set_data_dtype(np.int32)
    image.header.set_slope_inter(1.0, 0.0)
    image.header.set_intent("label")
    image.header["cal_min"], image.header["cal_max"] = 0, int(labels.max(initial=0))
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(image.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0))
    return path


def _caption(finding: Finding, number: int) -> str:
    axes = (
        f"long {finding.long_axis_mm:.1f} mm, short {finding.short_axis_mm:.1f} mm"
        if math.isfinite(finding.long_axis_mm)
        else "axes not measured"
    )
    top = sorted(finding.tags.items(), key=lambda item: -item[1])[:_TOP_TAGS]
    tags = ", ".join(f"{name} {p:.2f}" for name, p in top) or "no tags"
    return f"finding {number}: score {finding.score:.2f}, key slice k = {finding.key_slice}, {axes}\n{tags}"


def save_finding_png(
    path: str | os.PathLike,
    image: np.ndarray,
    finding: Finding,
    number: int,
    display: tuple[float, float],
    title: str = "",
) -> Path:
    """Write a PNG of ``finding`` (the ``number``-th of its volume) on its key slice (module docstring).

    image: (I, J, K) the volume. display: (low, high) grey window in the image's units. title: a first line
    (the volume's name, say). Returns the path.
    """
    k = finding.key_slice
    plane = np.asarray(image[:, :, k], np.float32)
    key = next(d for d in finding.detections if d.k == k)
    i0, j0, i1, j1 = key.box
    figure = Figure(figsize=(9, 5))
    FigureCanvasAgg(figure)  # attaches itself: no pyplot, no global state, no display
    whole, close = figure.subplots(1, 2)
    centre, half = (key.box[:2] + key.box[2:]) / 2, (1 + 2 * _MARGIN) * (key.box[2:] - key.box[:2]) / 2
    half = np.maximum(half, _MIN_VIEW_PX / 2)
    for ax in (whole, close):
        # Pixel (i, j) is drawn centred on (x = j, y = i), so edges lie at half-integers.
        ax.imshow(plane, cmap="gray", vmin=display[0], vmax=display[1], interpolation="nearest")
        ax.add_patch(
            Rectangle(
                (j0 - 0.5, i0 - 0.5), j1 - j0, i1 - i0, fill=False, edgecolor=_BOX_COLOUR, linewidth=1.5
            )
        )
        if key.mask is not None and key.mask.any():
            # Contoured on the box's pixels only, padded by one so the line closes: cheap at any slice size.
            rows, cols = key.pixels
            ii, jj = np.arange(rows.start - 1, rows.stop + 1), np.arange(cols.start - 1, cols.stop + 1)
            padded = np.pad(key.mask.astype(np.float32), 1)
            ax.contour(jj, ii, padded, levels=[0.5], colors=_MASK_COLOUR, linewidths=1.0)
        ax.set_xlabel("j")
        ax.set_ylabel("i")
    # The close-up's edges in box units, kept inside the slice; -0.5 turns them into drawing coordinates.
    lo, hi = np.maximum(centre - half, 0) - 0.5, np.minimum(centre + half, plane.shape) - 0.5
    close.set_xlim(lo[1], hi[1])
    close.set_ylim(hi[0], lo[0])  # rows grow downwards
    whole.set_title("key slice")
    close.set_title("close-up")
    figure.suptitle("\n".join(filter(None, (title, _caption(finding, number)))), fontsize=10)
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.1, top=0.8, wspace=0.2)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    return path
