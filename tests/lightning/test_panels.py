"""PNG panels: written atomically, any combination of optional images, odd sizes."""

import numpy as np
import pytest
import torch
from PIL import Image

from medmtl.keys import MNI_CLASSES
from medmtl.lightning.panels import panel_figure, save_panel


def _images(shape, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.random(shape).astype(np.float32)
    labels = rng.integers(0, 3, shape).astype(np.uint8)
    return image, labels


@pytest.mark.parametrize("shape", [(17, 23), (64, 48)])
@pytest.mark.parametrize("with_target", [False, True])
@pytest.mark.parametrize("with_seg", [False, True])
def test_panel_is_a_png(tmp_path, shape, with_target, with_seg):
    image, labels = _images(shape)
    path = save_panel(
        tmp_path / "sub" / "p.png",
        zero_filled=image,
        recon=torch.from_numpy(image),
        seg=labels if with_seg else None,
        target=image * 1.1 if with_target else None,
        seg_target=labels if with_seg and with_target else None,
        class_names=MNI_CLASSES,
        title="t",
    )
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size[0] > 100 and png.size[1] > 100
    assert [p.name for p in path.parent.iterdir()] == ["p.png"]  # no temporary left behind


def test_panel_count_follows_the_inputs():
    image, labels = _images((16, 16))
    assert len(panel_figure(image, image).axes) == 2
    assert len(panel_figure(image, image, seg=labels, target=image, seg_target=labels).axes) == 6


def test_empty_image_and_no_foreground_draw(tmp_path):
    zeros = np.zeros((9, 11), np.float32)
    save_panel(tmp_path / "z.png", zero_filled=zeros, recon=zeros, seg=zeros.astype(np.uint8))
    assert (tmp_path / "z.png").stat().st_size > 0


def test_rejects_non_2d(tmp_path):
    with pytest.raises(ValueError, match="2D"):
        save_panel(tmp_path / "x.png", zero_filled=np.zeros((2, 4, 4)), recon=np.zeros((4, 4)))
    assert not list(tmp_path.iterdir())
