"""Checkpoint files: atomic writes, and one clear error for a checkpoint that cannot be read.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in the system
temporary folder. Where that is another file system than the checkpoints (a node-local ``/tmp`` and a shared
checkpoint folder, the usual cluster layout), the final move is a copy into ``last.ckpt``, and a job killed
during it leaves a truncated file. ``AtomicCheckpointIO`` writes beside the destination instead, flushes the
bytes to disk and renames over it, so a checkpoint path always holds either the previous or the new
checkpoint. The temporary name (``.last.ckpt.<random>.tmp``) never matches ``--ckpt_path last``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from medmtl.errors import InputError
from medmtl.io.atomic import atomic_path


def previous_checkpoint(path: str | os.PathLike) -> Path | None:
    """The most recently written other ``*.ckpt`` beside ``path``, or None."""
    path = Path(path)
    try:
        others = [p for p in path.parent.glob("*.ckpt") if p.is_file() and p.resolve() != path.resolve()]
    except OSError:
        return None
    return max(others, key=lambda p: p.stat().st_mtime, default=None)


def unreadable_checkpoint(path: str | os.PathLike, reason: str) -> InputError:
    """The error for a checkpoint that cannot be loaded: names the file, says why, suggests the previous one."""
    earlier = previous_checkpoint(path)
    hint = (
        f"resume from the previous checkpoint, {earlier}"
        if earlier is not None
        else "no other checkpoint is in its folder"
    )
    return InputError(
        path, f"cannot be read as a checkpoint ({reason}); it may be truncated or corrupt: {hint}"
    )


def describe_error(err: BaseException) -> str:
    """``err`` as one short line: its type and the start of its message."""
    text = " ".join(str(err).split())
    # torch.load(weights_only=True) wraps the unpickler's complaint in a paragraph about its defaults.
    found = re.search(r"WeightsUnpickler error: (.+?)(?: Check the documentation|$)", text)
    text = (found.group(1) if found else text).split(". ")[0]  # the first sentence says what went wrong
    return f"{type(err).__name__}: {text[:160]}" if text else type(err).__name__


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic, flushed local writes and ``InputError`` for unreadable files.

    Remote paths (``s3://`` and the like) keep Lightning's fsspec writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # the rename must not reach the disk before the bytes do

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if "://" not in str(path):
            if Path(path).is_dir():
                raise InputError(path, "is a folder, not a checkpoint file")
            if not Path(path).is_file():
                raise InputError(path, "no such checkpoint file")
        try:
            checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except Exception as err:  # torch.load raises many types for a damaged file
            raise unreadable_checkpoint(path, describe_error(err)) from err
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise unreadable_checkpoint(path, "no state_dict in it")
        return checkpoint
