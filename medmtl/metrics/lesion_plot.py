"""A one-page PNG of lesion metrics: the FROC curves and the per-tag AUC bars of ``LesionMetrics.compute``."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medmtl.errors import InputError
from medmtl.io.atomic import atomic_path

_CURVE_POINTS = 200


def _plot_froc(ax, froc: dict) -> None:
    rates = sorted({rate for curve in froc.values() for rate in curve["at"]})
    lo, hi = rates[0] / 2, rates[-1] * 1.5  # room for the end markers
    xs = np.geomspace(lo, hi, _CURVE_POINTS)
    drawn = False
    for iou, curve in sorted(froc.items(), reverse=True):
        if not len(curve["fp_per_image"]):
            continue  # no lesions: no curve
        # The same interpolation as the reported sensitivities (MONAI's curve runs from high to low FP).
        ys = np.interp(xs, curve["fp_per_image"][::-1], curve["sensitivity"][::-1])
        (line,) = ax.plot(xs, ys, label=f"IoU ≥ {iou:g} (mean {curve['score']:.3f})")
        ax.plot(list(curve["at"]), list(curve["at"].values()), "o", color=line.get_color())
        drawn = True
    if drawn:
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no lesions", ha="center", va="center", transform=ax.transAxes)
    ax.set_xscale("log", base=2)
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity")
    ax.set_title("FROC")
    ax.grid(True, alpha=0.3)


def _plot_auc(ax, auc: np.ndarray, mean: float, tag_names: list[str]) -> None:
    positions = np.arange(len(auc))
    ax.bar(positions, np.nan_to_num(auc, nan=0.0), color="tab:blue")
    labels = [name if np.isfinite(a) else f"{name} (n/a)" for name, a in zip(tag_names, auc)]
    ax.set_xticks(positions, labels, rotation=90, fontsize=8)
    if np.isfinite(mean):
        ax.axhline(mean, color="k", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
        ax.legend(loc="lower right")
    if not len(auc):
        ax.text(0.5, 0.5, "no tags", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("ROC AUC")
    ax.set_title("tag AUC, matched detections (n/a: one class)")


def plot_lesion_metrics(results: dict, path: str | os.PathLike, tag_names) -> None:
    """Write the FROC curves (every IoU threshold of ``results["froc"]``, sensitivities at the reported
    rates marked) and the per-tag AUC bars (``results["tag_auc"]``, named by ``tag_names``) to the PNG
    ``path``, atomically. ``results`` is ``LesionMetrics.compute()``'s."""
    tag_names = [str(name) for name in tag_names]
    auc = np.asarray(results["tag_auc"], np.float64)
    if len(tag_names) != len(auc):
        raise InputError("plot_lesion_metrics", f"{len(tag_names)} tag names for {len(auc)} tags")
    figure = Figure(figsize=(max(10.0, 6 + 0.25 * len(auc)), 4.5), layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself: no pyplot, so no global state and no display needed
    froc_ax, auc_ax = figure.subplots(1, 2, width_ratios=(1, max(1.0, 0.1 * len(auc))))
    _plot_froc(froc_ax, results["froc"])
    _plot_auc(auc_ax, auc, results["tag_auc_mean"], tag_names)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
