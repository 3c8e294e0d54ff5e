"""Inference on k-space volumes from a checkpoint of ``medmtl fit``: ``Predictor`` and the predictions file.

``Predictor.from_checkpoint`` rebuilds the network from the configuration that LightningCLI stored in the
checkpoint's hyper-parameters (``model: {class_path, init_args}``) and loads its weights. The checkpoint is
read with ``torch.load(weights_only=True)``, so it cannot run code, and only classes inside ``medmtl`` are
built. ``predict_volume`` then does what the training data pipeline does to one slice (mask, estimate the
calibration region, normalise the intensity) and undoes the normalisation on the way out.

Predictions file (DESIGN.md, "File formats"): ``reconstruction`` (S, H, W) float32 in the intensity units of
the input's coil-combined image, ``segmentation`` (S, H, W) uint8, attribute ``classes`` (JSON list).
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from medmtl.data.files import kspace_to_tensor
from medmtl.errors import InputError
from medmtl.io.atomic import atomic_path
from medmtl.io.kspace import mask_problem
from medmtl.transforms.acs import acs_mask_from_mask
from medmtl.transforms.coils import rss_image
from medmtl.transforms.intensity import kspace_scale

RECONSTRUCTION = "reconstruction"
SEGMENTATION = "segmentation"
CLASSES_ATTR = "classes"
# Only networks from this package are built from a checkpoint's configuration.
_TRUSTED_PREFIX = "medmtl."
_WHAT_WE_READ = "a checkpoint written by `medmtl fit`"


def write_predictions(
    path: str | os.PathLike,
    reconstruction: np.ndarray,
    segmentation: np.ndarray,
    classes: Sequence[str],
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write one predictions file atomically (layout in the module docstring). Returns the path.

    ``reconstruction`` (S, H, W) real, ``segmentation`` (S, H, W) integer labels; ``attrs`` are extra file
    attributes (strings and numbers). An existing file that holds ``kspace`` is never replaced.
    """
    recon = np.asarray(reconstruction, dtype=np.float32)
    seg = np.asarray(segmentation)
    if recon.ndim != 3 or seg.shape != recon.shape:
        raise InputError(
            "predictions", f"reconstruction {recon.shape} and segmentation {seg.shape} must be (S, H, W)"
        )
    path = Path(path)
    if path.is_file() and h5py.is_hdf5(path):
        with h5py.File(path, "r") as existing:
            if "kspace" in existing:
                raise InputError(path, "holds k-space (an input?); predictions never overwrite it")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset(RECONSTRUCTION, data=recon, chunks=(1, *recon.shape[1:]))
        f.create_dataset(SEGMENTATION, data=seg.astype(np.uint8), chunks=(1, *seg.shape[1:]))
        f.attrs[CLASSES_ATTR] = json.dumps(list(classes))
        f.attrs.update(dict(attrs or {}))
    return path


def _load_checkpoint(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise InputError(path, "is a folder, not a checkpoint file")
    if not path.exists():
        raise InputError(path, "no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for files that are not (safe) checkpoints
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise InputError(
                path,
                f"holds a pickled Python object ({found.group(1)}) and is not loaded; expected {_WHAT_WE_READ}",
            ) from err
        found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = found.group(1).strip() if found else f"{type(err).__name__}: {' '.join(text.split())[:120]}"
        raise InputError(path, f"is not a PyTorch checkpoint ({detail})") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise InputError(path, f"is not a Lightning checkpoint (no state_dict); expected {_WHAT_WE_READ}")
    return checkpoint


def _model_config(path: Path, hparams: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    spec = hparams.get("model")
    if not (isinstance(spec, Mapping) and isinstance(spec.get("class_path"), str)):
        raise InputError(
            path,
            f"records no network configuration (hyper-parameter model.class_path); expected {_WHAT_WE_READ}",
        )
    class_path = spec["class_path"]
    if not class_path.startswith(_TRUSTED_PREFIX):
        raise InputError(path, f"asks for network class {class_path!r}, which is not part of medmtl")
    return class_path, dict(spec.get("init_args") or {})


def _build(path: Path, class_path: str, init_args: dict[str, Any]) -> nn.Module:
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise InputError(path, f"network class {class_path!r} does not exist in this medmtl version") from err
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise InputError(path, f"{class_path!r} is not a network class")
    try:
        return cls(**init_args)
    except (TypeError, ValueError) as err:
        raise InputError(path, f"cannot build {name} from its stored configuration ({err})") from err


class Predictor:
    """Reconstructs and segments k-space volumes with a trained network.

    Args:
        model: a network called as ``model(kspace, mask, acs_mask)`` (shapes in ``predict_volume``) whose
            output has ``recon`` (B, H, W) and ``seg_logits`` (B, K, H, W), e.g. ``ReconSegNet``; ``recon`` may
            be None for a segmentation-only network (the zero-filled image is returned then).
        classes: class names, index = label.
        device: where to run.
        batch_size: slices per forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        device: str | torch.device = "cpu",
        batch_size: int = 1,
    ):
        if batch_size < 1:
            raise InputError("batch_size", f"must be at least 1, got {batch_size}")
        if "seg" not in getattr(model, "tasks", ("seg",)):
            raise InputError(
                "model", f"has no segmentation task (tasks {list(model.tasks)}); predictions need one"
            )
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.classes = tuple(classes)
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", batch_size: int = 1
    ) -> Predictor:
        """Build the network a ``medmtl fit`` checkpoint describes and load its weights.

        Raises ``InputError(path, what)`` for a missing file, a file that is not a checkpoint, or a
        checkpoint of another kind of model or whose weights do not fit its configuration.
        """
        path = Path(path)
        checkpoint = _load_checkpoint(path)
        hparams = checkpoint.get("hyper_parameters")
        hparams = hparams if isinstance(hparams, Mapping) else {}
        class_path, init_args = _model_config(path, hparams)
        model = _build(path, class_path, init_args)
        prefix = "model."
        state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            detail = " ".join(str(err).split())
            raise InputError(
                path,
                f"weights do not match the stored {class_path.rpartition('.')[2]} configuration ({detail[:300]})",
            ) from err
        classes = hparams.get("class_names")
        num_classes = getattr(model, "num_classes", None)
        if not classes or (num_classes is not None and len(classes) != num_classes):
            raise InputError(
                path, f"records class names {classes!r} that do not fit the network's {num_classes} classes"
            )
        try:
            return cls(model, classes, device=device, batch_size=batch_size)
        except InputError as err:
            raise InputError(path, f"holds a network that {err.what}") from err

    @torch.inference_mode()
    def predict_volume(
        self,
        kspace: np.ndarray,
        mask: np.ndarray,
        progress: Callable[[int], Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reconstruct and segment every slice.

        Args:
            kspace: (S, C, H, W) complex multi-coil k-space (zeros off the mask, or fully sampled: it is masked
                here either way).
            mask: (W,), (1, W) or (H, W) sampling mask, nonzero = sampled.
            progress: called with the number of slices done after every batch (a tqdm ``update``, say).

        Returns:
            reconstruction (S, H, W) float32 in the intensity units of the input's coil-combined image, and
            segmentation (S, H, W) uint8.
        """
        kspace = np.asarray(kspace)
        if kspace.ndim != 4 or kspace.dtype.kind != "c":
            raise InputError(
                "kspace", f"shape {kspace.shape}, dtype {kspace.dtype}; expected (S, C, H, W) complex"
            )
        height, width = kspace.shape[-2:]
        mask = np.asarray(mask)
        problem = mask_problem(mask, height, width)
        if problem:
            raise InputError("mask", problem)
        mask2d = (mask != 0).astype(np.float32).reshape(-1, width)
        acs = acs_mask_from_mask(mask2d)
        if not acs.any():
            raise InputError(
                "mask", "samples no calibration region around the k-space centre (the centre line is missing)"
            )
        mask_t = torch.from_numpy(mask2d)[None, :, :, None].to(self.device)
        acs_t = torch.from_numpy(acs)[None, :, :, None].to(self.device)
        recons, segs = [], []
        for start in range(0, kspace.shape[0], self.batch_size):
            chunk = kspace_to_tensor(kspace[start : start + self.batch_size]).to(self.device) * mask_t[None]
            scales = []
            for i, k in enumerate(chunk):
                try:
                    scales.append(kspace_scale(k))
                except InputError as err:
                    raise InputError("kspace", f"slice {start + i}: {err.what}") from err
            scale = torch.stack(scales)[:, None, None]
            b = chunk.shape[0]
            out = self.model(
                chunk / scale[..., None, None],
                mask_t.expand(b, -1, -1, -1, -1),
                acs_t.expand(b, -1, -1, -1, -1),
            )
            recon = out.recon if out.recon is not None else rss_image(chunk / scale[..., None, None])
            recons.append((recon.float() * scale).cpu().numpy())
            segs.append(out.seg_logits.argmax(dim=1).to(torch.uint8).cpu().numpy())
            if progress is not None:
                progress(b)
        return np.concatenate(recons).astype(np.float32, copy=False), np.concatenate(segs)
