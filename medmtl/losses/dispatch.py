"""Which implementation a loss call runs: the fused Triton kernels or the pure-PyTorch path.

``auto`` (the default) takes Triton for CUDA tensors when ``triton`` imports and the loss's kernels
are in ``GPU_VERIFIED``, and PyTorch for everything else. The ``backend=`` argument of every loss,
else the environment variable ``MEDMTL_LOSS_BACKEND``, forces a path: ``torch`` always works;
``triton`` runs the kernels whether verified or not, and on a CPU tensor or without Triton installed
falls back to PyTorch with a warning, never an error. Triton is imported only when a CUDA tensor
asks for it, so CPU-only installs never load it.

``GPU_VERIFIED`` names the kernels (``TRITON_KERNELS``) whose compiled Triton path has matched the
PyTorch path, values and gradients, in ``tests/losses/test_loss_cuda.py`` on a real GPU. The CPU
suite runs the kernels only under Triton's interpreter, which does not catch every way the compiled
code can differ, so a kernel joins the set only after a green GPU run (``benchmarks/gpu.sh``); until
then ``auto`` gives the exact PyTorch path.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from medmtl.errors import ConfigError

BACKEND_ENV = "MEDMTL_LOSS_BACKEND"
BACKENDS = ("auto", "torch", "triton")
TRITON_KERNELS = ("ssim", "dice")  # ssim also serves MS-SSIM; dice serves Dice and Dice + CE
# 2026-11-26, H200 (torch 2.11, triton 3.6), `QUICK=1 bash benchmarks/gpu.sh`: every SSIM case matched in
# value and gradients. 2026-11-27, same card and versions, `bash benchmarks/gpu.sh`: every SSIM and Dice +
# CE case matched the float64 answer (the Dice mismatch of the first run was the PyTorch reference's own
# float32 error, now fixed: its per-class sums accumulate in float64).
GPU_VERIFIED: frozenset[str] = frozenset({"ssim", "dice"})


@torch.compiler.assume_constant_result  # torch.compile runs it while tracing: no import in the graph
def triton_available() -> bool:
    """True when ``import triton`` works (checked once per process)."""
    return _import_triton()


@functools.cache
def _import_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def refuse_double_backward(*saved: torch.Tensor | None, where: str) -> None:
    """For the eager Triton routes' backwards (kernels, with no gradient of their own): raise if asked for a
    graph of their own (``create_graph=True`` turns grad mode on inside backward), where the result would
    silently carry no second-order gradient."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in saved):
        raise RuntimeError(
            f"{where}: the Triton kernels have no second-order gradient; use backend='torch' for "
            "create_graph=True"
        )


def requested_backend(backend: str | None) -> str:
    """The backend asked for: the argument if given, else ``$MEDMTL_LOSS_BACKEND``, else ``auto``."""
    if backend is not None:
        choice, source = backend, "backend"
    else:
        choice, source = os.environ.get(BACKEND_ENV, "auto"), BACKEND_ENV
    choice = choice.strip().lower()
    if choice not in BACKENDS:
        raise ConfigError(source, f"must be one of {', '.join(BACKENDS)}, got {choice!r}")
    return choice


def use_triton(backend: str | None, tensor: torch.Tensor, kernel: str | None = None) -> bool:
    """Whether a loss on ``tensor`` runs the Triton kernels ``kernel`` (one of ``TRITON_KERNELS``; None
    counts as unverified) -- see the module docstring for the rules."""
    choice = requested_backend(backend)
    if choice == "torch" or (choice == "auto" and kernel not in GPU_VERIFIED):
        return False
    if not tensor.is_cuda:
        if choice == "triton":
            warnings.warn(
                f"medmtl losses: the Triton path needs CUDA tensors, got {tensor.device}; using PyTorch",
                stacklevel=3,
            )
        return False
    if not triton_available():
        if choice == "triton":
            warnings.warn("medmtl losses: triton is not installed; using PyTorch", stacklevel=3)
        return False
    return True
