"""Which implementation a loss call runs: the fused Triton kernels or the pure-PyTorch path.

``auto`` (the default) takes Triton for CUDA tensors when ``triton`` imports, and PyTorch for
everything else. The ``backend=`` argument of every loss, else the environment variable
``MEDMTL_LOSS_BACKEND``, forces a path: ``torch`` always works; ``triton`` on a CPU tensor or without
Triton installed falls back to PyTorch with a warning, never an error. Triton is imported only when a
CUDA tensor asks for it, so CPU-only installs never load it.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from medmtl.errors import ConfigError

BACKEND_ENV = "MEDMTL_LOSS_BACKEND"
BACKENDS = ("auto", "torch", "triton")


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


def use_triton(backend: str | None, tensor: torch.Tensor) -> bool:
    """Whether a loss on ``tensor`` runs the Triton kernels (see the module docstring for the rules)."""
    choice = requested_backend(backend)
    if choice == "torch":
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
