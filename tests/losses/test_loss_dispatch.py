"""Backend choice: argument over environment over ``auto``; CPU tensors and a missing Triton fall back
to PyTorch (with a warning when Triton was forced), never an error."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medmtl.errors import ConfigError
from medmtl.losses import dice_ce_loss, dispatch, ssim

CUDA_LIKE = SimpleNamespace(is_cuda=True, device="cuda:0")  # what use_triton reads of a tensor


def test_argument_beats_environment_beats_auto(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    assert dispatch.requested_backend(None) == "auto"
    monkeypatch.setenv(dispatch.BACKEND_ENV, " Torch ")
    assert dispatch.requested_backend(None) == "torch"
    assert dispatch.requested_backend("triton") == "triton"


@pytest.mark.parametrize(("arg", "env", "source"), [("fast", None, "backend"), (None, "cuda", "MEDMTL_LOSS_BACKEND")])
def test_unknown_backends_are_config_errors(monkeypatch, arg, env, source):
    if env is None:
        monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    else:
        monkeypatch.setenv(dispatch.BACKEND_ENV, env)
    with pytest.raises(ConfigError, match=f"^{source}: must be one of auto, torch, triton"):
        dispatch.requested_backend(arg)


def test_cpu_tensors_take_pytorch_and_forcing_triton_only_warns(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    x = torch.rand(3)
    assert not dispatch.use_triton(None, x)
    assert not dispatch.use_triton("torch", x)
    with pytest.warns(UserWarning, match="needs CUDA tensors"):
        assert not dispatch.use_triton("triton", x)


def test_cuda_tensors_take_triton_only_when_it_imports(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    monkeypatch.setattr(dispatch, "GPU_VERIFIED", frozenset(dispatch.TRITON_KERNELS))
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    assert dispatch.use_triton(None, CUDA_LIKE, "ssim")
    assert not dispatch.use_triton("torch", CUDA_LIKE, "ssim")
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    assert not dispatch.use_triton("auto", CUDA_LIKE, "ssim")
    with pytest.warns(UserWarning, match="triton is not installed"):
        assert not dispatch.use_triton("triton", CUDA_LIKE, "ssim")


@pytest.mark.parametrize("kernel", [*dispatch.TRITON_KERNELS, None])
def test_auto_takes_only_gpu_verified_kernels_and_forcing_takes_any(monkeypatch, kernel):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    others = frozenset(dispatch.TRITON_KERNELS) - {kernel}
    monkeypatch.setattr(dispatch, "GPU_VERIFIED", others)
    assert not dispatch.use_triton("auto", CUDA_LIKE, kernel)
    assert dispatch.use_triton("triton", CUDA_LIKE, kernel)
    if kernel is not None:
        monkeypatch.setattr(dispatch, "GPU_VERIFIED", others | {kernel})
        assert dispatch.use_triton("auto", CUDA_LIKE, kernel)


def test_verified_kernels_are_known_names():
    # A misspelt name in GPU_VERIFIED would silently keep a verified kernel off ``auto``.
    assert dispatch.GPU_VERIFIED <= frozenset(dispatch.TRITON_KERNELS)


def test_losses_forced_to_triton_on_cpu_give_the_pytorch_result(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 1, 16, 16, generator=g), torch.rand(1, 1, 16, 16, generator=g)
    monkeypatch.setenv(dispatch.BACKEND_ENV, "triton")
    with pytest.warns(UserWarning):
        forced = ssim(x, y, 1.0)
    assert forced.item() == ssim(x, y, 1.0, backend="torch").item()
    logits, labels = torch.randn(1, 3, 6, 6, generator=g), torch.randint(0, 3, (1, 1, 6, 6), generator=g)
    with pytest.warns(UserWarning):
        forced = dice_ce_loss(logits, labels)
    assert forced.item() == dice_ce_loss(logits, labels, backend="torch").item()


def test_a_bad_environment_value_surfaces_at_the_call(monkeypatch):
    monkeypatch.setenv(dispatch.BACKEND_ENV, "gpu")
    with pytest.raises(ConfigError, match="MEDMTL_LOSS_BACKEND"):
        ssim(torch.rand(1, 1, 12, 12), torch.rand(1, 1, 12, 12), 1.0)
