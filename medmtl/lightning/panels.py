"""PNG panels of one slice: zero-filled input, reconstruction, error and segmentation overlays.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global state, no display needed) and
written through ``atomic_path``. Every image panel shares one grey window, [0, the 99.5th percentile of the
reference image], so brightness differences between panels are real.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from medmtl.io.atomic import atomic_path

# Label colours after background (tab10 without its grey), so GM and WM are told apart at a glance.
_LABEL_COLOURS = (
    "tab:red",
    "tab:blue",
    "tab:green",
    "tab:orange",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
)
_OVERLAY_ALPHA = 0.45
_WINDOW_QUANTILE = 0.995


def _array(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"a panel image must be 2D (H, W), got shape {x.shape}")
    return x


def _window(reference: np.ndarray) -> float:
    top = float(np.quantile(reference, _WINDOW_QUANTILE))
    return top if top > 0 else float(reference.max()) or 1.0


def _overlay(ax, image: np.ndarray, labels: np.ndarray, vmax: float, num_classes: int, title: str) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=vmax)
    foreground = max(num_classes - 1, 1)
    colours = ListedColormap([_LABEL_COLOURS[i % len(_LABEL_COLOURS)] for i in range(foreground)])
    shown = np.ma.masked_where(labels == 0, labels)
    # one colour bin per label 1 .. K-1
    ax.imshow(
        shown, cmap=colours, vmin=0.5, vmax=foreground + 0.5, alpha=_OVERLAY_ALPHA, interpolation="nearest"
    )
    ax.set_title(title)


def panel_figure(
    zero_filled,
    recon,
    seg=None,
    target=None,
    seg_target=None,
    class_names: Sequence[str] = (),
    title: str = "",
) -> Figure:
    """A figure of one slice; every argument is (H, W) (numpy or tensor), all of the same shape.

    Args:
        zero_filled: magnitude of the zero-filled input (any intensity units, the same as ``recon``).
        recon: reconstructed magnitude.
        seg: predicted labels, overlaid on ``recon``.
        target: fully sampled magnitude; adds the target and the error |recon - target|.
        seg_target: ground-truth labels, overlaid on ``target`` (or on ``recon`` without a target).
        class_names: names of the labels, background first (for the legend line in the title).
        title: the figure's title.
    """
    zero_filled, recon = _array(zero_filled), _array(recon)
    reference = _array(target) if target is not None else recon
    vmax = _window(reference)
    label_maps = [_array(s) for s in (seg, seg_target) if s is not None]
    num_classes = len(class_names) or max((int(m.max()) + 1 for m in label_maps), default=0)
    panels: list[tuple[str, object]] = [("zero-filled", zero_filled), ("reconstruction", recon)]
    if target is not None:
        panels += [("target", _array(target)), ("|error| x5", np.abs(recon - _array(target)) * 5)]
    if seg is not None:
        panels.append(("segmentation", ("overlay", recon, _array(seg))))
    if seg_target is not None:
        panels.append(("ground truth", ("overlay", reference, _array(seg_target))))

    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, content) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if isinstance(content, tuple):
            _overlay(ax, content[1], content[2], vmax, num_classes, name)
        else:
            ax.imshow(content, cmap="gray", vmin=0, vmax=vmax)
            ax.set_title(name)
    if class_names and (seg is not None or seg_target is not None):
        legend = ", ".join(
            f"{name} = {colour.removeprefix('tab:')}" for name, colour in zip(class_names[1:], _LABEL_COLOURS)
        )
        title = f"{title}\n{legend}" if title else legend
    if title:
        fig.suptitle(title)
    return fig


def save_panel(path: str | os.PathLike, **panel) -> Path:
    """Write ``panel_figure(**panel)`` as a PNG at ``path``, atomically. Returns the path."""
    fig = panel_figure(**panel)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return path
