"""The simulator's host volumes: the MNI152 template permuted to each orientation and resampled along k."""

from __future__ import annotations

import numpy as np
import pytest

from medmtl.data.lesion_host import host_volume
from medmtl.data.mni import load_template


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal"])
def test_host_affine_follows_the_permutation(orientation):
    template = load_template()
    host = host_volume(orientation, 1.0)
    rng = np.random.default_rng(0)
    inverse = np.linalg.inv(template.affine)
    for _ in range(20):
        ijk = [int(rng.integers(n)) for n in host.image.shape]
        source = np.rint((inverse @ host.affine @ [*ijk, 1.0])[:3]).astype(int)
        assert host.image[tuple(ijk)] == template.image[tuple(source)]
    assert host.image.shape[2] == template.image.shape[("sagittal", "coronal", "axial").index(orientation)]


def test_host_resampled_slices():
    host = host_volume("coronal", 3.0, 2.5)
    np.testing.assert_allclose(host.spacing, [3.0, 3.0, 2.5])
    np.testing.assert_allclose(np.linalg.norm(host.affine[:3, :3], axis=0), host.spacing)
    assert host.image.shape == (66, 63, 93)  # x, z at 3 mm; y: 78 voxels at 3 mm span 231 mm, 93 at 2.5 mm
    assert host.image.flags.writeable and host.labels.shape == host.image.shape
