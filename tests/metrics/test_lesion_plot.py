"""The lesion metrics PNG: written atomically, readable, with and without lesions and tags."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from medmtl.errors import InputError
from medmtl.metrics.lesion import LesionMetrics
from medmtl.metrics.lesion_plot import plot_lesion_metrics


def results_with(lesions: bool, num_tags: int) -> dict:
    metrics = LesionMetrics()
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])[: 2 if lesions else 0]
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 25], [40, 40, 44, 44]])
    tags = np.tile(np.linspace(0.1, 0.9, num_tags), (3, 1))
    gt_tags = np.eye(2, num_tags)[: len(gt)]
    metrics.update(boxes, [0.9, 0.6, 0.3], tags, gt, gt_tags)
    metrics.update(boxes[:1] + 5, [0.5], tags[:1], gt[:1], gt_tags[:1])
    return metrics.compute()


@pytest.mark.parametrize(("lesions", "num_tags"), [(True, 3), (False, 0), (True, 1)])
def test_png_is_written_and_readable(tmp_path, lesions, num_tags):
    results = results_with(lesions, num_tags)
    path = tmp_path / "out" / "lesion_metrics.png"
    plot_lesion_metrics(results, path, [f"tag{t}" for t in range(num_tags)])
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] >= 300 and pixels.shape[1] >= 500
    assert pixels.std() > 0  # something was drawn
    assert [p.name for p in path.parent.iterdir()] == ["lesion_metrics.png"]  # no temporary file left


def test_tag_names_must_match(tmp_path):
    with pytest.raises(InputError, match="2 tag names for 3 tags"):
        plot_lesion_metrics(results_with(True, 3), tmp_path / "x.png", ["a", "b"])
    assert not (tmp_path / "x.png").exists()
