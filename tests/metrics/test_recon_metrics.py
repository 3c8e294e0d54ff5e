"""Reconstruction metrics against scikit-image on seeded images of odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medmtl.errors import InputError
from medmtl.metrics import ReconMetrics, nmse, psnr, ssim


def _pair(seed: int, shape: tuple[int, int], batch: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    target = np.stack(
        [np.exp(-(x**2 + y**2) / rng.uniform(0.1, 0.5)) * rng.uniform(0.5, 3) for _ in range(batch)]
    )
    pred = target + 0.05 * rng.standard_normal(target.shape)
    return pred.astype(np.float32), target.astype(np.float32)


@pytest.mark.parametrize("shape", [(7, 7), (16, 23), (33, 20)])
def test_ssim_psnr_nmse_match_skimage(shape):
    pred, target = _pair(0, shape)
    got_ssim = ssim(torch.from_numpy(pred), torch.from_numpy(target)).numpy()
    got_psnr = psnr(torch.from_numpy(pred), torch.from_numpy(target)).numpy()
    got_nmse = nmse(torch.from_numpy(pred), torch.from_numpy(target)).numpy()
    for i in range(len(pred)):
        rng = float(target[i].max())
        want = structural_similarity(target[i], pred[i], data_range=rng)
        assert got_ssim[i] == pytest.approx(want, abs=1e-6)
        assert got_psnr[i] == pytest.approx(
            peak_signal_noise_ratio(target[i], pred[i], data_range=rng), abs=1e-4
        )
        want_nmse = np.sum((target[i] - pred[i]).astype(np.float64) ** 2) / np.sum(
            target[i].astype(np.float64) ** 2
        )
        assert got_nmse[i] == pytest.approx(want_nmse, rel=1e-6)


def test_ssim_of_identical_images_is_one():
    _, target = _pair(1, (12, 9))
    t = torch.from_numpy(target)
    torch.testing.assert_close(ssim(t, t), torch.ones(3, dtype=torch.float64))


def test_too_small_or_mismatched_raises():
    with pytest.raises(InputError, match="window"):
        ssim(torch.ones(1, 6, 10), torch.ones(1, 6, 10))
    with pytest.raises(InputError, match="must be"):
        psnr(torch.ones(1, 8, 8), torch.ones(1, 8, 9))


def test_recon_metrics_averages_slices_across_batches_and_skips_empty():
    pred, target = _pair(2, (15, 17), batch=4)
    p, t = torch.from_numpy(pred), torch.from_numpy(target)
    metric = ReconMetrics()
    metric.update(p[:1], t[:1])
    metric.update(p[1:], t[1:])
    metric.update(torch.rand(1, 15, 17), torch.zeros(1, 15, 17))  # no data range: skipped for SSIM and PSNR
    out = metric.compute()
    assert float(out["ssim"]) == pytest.approx(float(ssim(p, t).mean()), abs=1e-9)
    assert float(out["psnr"]) == pytest.approx(float(psnr(p, t).mean()), abs=1e-9)
    assert float(out["nmse"]) == pytest.approx(float(nmse(p, t).mean()), abs=1e-9)
