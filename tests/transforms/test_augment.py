import numpy as np
import pytest
import torch
from monai.transforms import RandAdjustContrastd, RandBiasFieldd

from medmtl.errors import ConfigError
from medmtl.keys import Keys
from medmtl.transforms.augment import image_augmentation


def _sample(h=40, w=33, seed=0):
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    label = ((xx**2 + yy**2) < 0.6).float() + ((xx**2 + yy**2) < 0.2).float()  # 0, 1, 2
    image = (label + 0.1 * torch.rand(h, w, generator=gen))[None]
    return {Keys.IMAGE: image, Keys.LABEL: label[None]}


def test_seeded_and_reproducible():
    sample = _sample()
    a = image_augmentation(prob=1.0).set_random_state(3)(sample)
    b = image_augmentation(prob=1.0).set_random_state(3)(sample)
    c = image_augmentation(prob=1.0).set_random_state(4)(sample)
    torch.testing.assert_close(a[Keys.IMAGE], b[Keys.IMAGE])
    torch.testing.assert_close(a[Keys.LABEL], b[Keys.LABEL])
    assert not torch.allclose(a[Keys.IMAGE], c[Keys.IMAGE])
    assert not torch.allclose(a[Keys.IMAGE], sample[Keys.IMAGE])


@pytest.mark.parametrize("seed", range(4))
def test_labels_keep_their_values_shape_and_geometry(seed):
    sample = _sample(seed=seed)
    out = image_augmentation(prob=1.0).set_random_state(seed)(sample)
    for key in (Keys.IMAGE, Keys.LABEL):
        assert type(out[key]) is torch.Tensor and out[key].shape == sample[key].shape
    assert set(np.unique(out[Keys.LABEL].numpy())) <= {0.0, 1.0, 2.0}
    # the label moved with the image: where the label is 2 the image is brighter than where it is 0
    image, label = out[Keys.IMAGE][0], out[Keys.LABEL][0]
    assert image[label == 2].mean() > image[label == 0].mean()


def test_intensity_changes_never_touch_the_label():
    # behaviourally, test_labels_keep_their_values... fails if gamma or the bias field reach a label
    compose = image_augmentation(keys=(Keys.IMAGE, "other_image", Keys.LABEL))
    intensity = [t for t in compose.transforms if isinstance(t, RandAdjustContrastd | RandBiasFieldd)]
    assert len(intensity) == 2
    for t in intensity:
        assert tuple(t.keys) == (Keys.IMAGE, "other_image")


def test_prob_zero_is_identity():
    sample = _sample()
    out = image_augmentation(prob=0.0).set_random_state(0)(sample)
    torch.testing.assert_close(out[Keys.IMAGE], sample[Keys.IMAGE])
    torch.testing.assert_close(out[Keys.LABEL], sample[Keys.LABEL])


def test_bad_arguments():
    with pytest.raises(ConfigError, match="label_keys"):
        image_augmentation(keys=(Keys.IMAGE,), label_keys=(Keys.LABEL,))
    with pytest.raises(ConfigError, match="prob"):
        image_augmentation(prob=2)
