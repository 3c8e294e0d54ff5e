"""Inference on k-space volumes from a checkpoint of ``medmtl fit``: ``Predictor`` and the predictions file.

``Predictor.from_checkpoint`` rebuilds the network from the configuration that LightningCLI stored in the
checkpoint's hyper-parameters (``model: {class_path, init_args}``) and loads its weights. The checkpoint is
read with ``torch.load(weights_only=True)``, so it cannot run code, and only classes inside ``medmtl`` are
built. Nothing in the file is trusted for a size: the archive must be laid out as ``torch.save`` writes it
(uncompressed members), the network is first built on the meta device (no memory) within a budget of
registered tensors, checked against the weights' names and shapes and against the file's size, and only
then materialised; NaN or Inf weights are refused.

``predict_volume`` then does what the training data pipeline does to one slice (mask, estimate the
calibration region, normalise the intensity) and undoes the normalisation on the way out.

Predictions file (DESIGN.md, "File formats"): ``reconstruction`` (S, H, W) float32 in the intensity units of
the input's coil-combined image, ``segmentation`` (S, H, W) uint8, attribute ``classes`` (JSON list).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn
from torch.nn.modules import module as module_hooks

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
# A strict load needs a checkpoint tensor for every parameter and buffer; medmtl's networks register about
# three modules, parameters and buffers per such tensor while they are built (ReconSegNet 2.8, MONAI's VarNet
# 3.4). A configuration registering more than this many per tensor cannot fit the weights, and is stopped
# before it is built in full (num_cascades = 10**6 would take hours even on the meta device).
_REGISTRATIONS_PER_TENSOR = 8
# A network may hold at most this many bytes per byte of checkpoint file (float16 weights in a float64
# network); more means the configuration or a tensor's shape (stride 0) claims data the file does not hold.
_BYTES_PER_FILE_BYTE = 4
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
        try:
            with h5py.File(path, "r") as existing:
                holds_kspace = "kspace" in existing
        except (OSError, RuntimeError, KeyError, ValueError) as err:  # h5py's errors for damaged metadata
            raise InputError(
                path,
                f"is a damaged HDF5 file; predictions cannot check that it is no input, so keep it ({err})",
            ) from err
        if holds_kspace:
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
    problem = _archive_problem(path)
    if problem:
        raise InputError(path, f"is not a PyTorch checkpoint ({problem})")
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


def _archive_problem(path: Path) -> str | None:
    """Why ``path`` is not a zip archive laid out as ``torch.save`` writes it, or None.

    ``torch.load`` allocates the size a compressed member declares before it inflates it, so a few-KiB file
    could ask for gigabytes; ``torch.save`` stores every member uncompressed, so compression is refused.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except Exception as err:  # zipfile raises BadZipFile, EOFError, ValueError, ... for damaged directories
        return f"not a zip archive as torch.save writes: {' '.join(str(err).split())[:120]}"
    compressed = next((m.filename for m in members if m.compress_type != zipfile.ZIP_STORED), None)
    if compressed is not None:
        return f"archive member {compressed!r} is compressed, which torch.save never does"
    return None


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
    init_args = spec.get("init_args") or {}
    if not (isinstance(init_args, Mapping) and all(isinstance(key, str) for key in init_args)):
        raise InputError(
            path, f"records network arguments (model.init_args) without names: {init_args!r:.80}"
        )
    return class_path, dict(init_args)


class _TooManyTensors(Exception):
    """Raised inside a network's constructor when it registers more tensors than the budget allows."""


@contextmanager
def _registration_budget(limit: int) -> Iterator[None]:
    """Raise ``_TooManyTensors`` once more than ``limit`` modules, parameters and buffers are registered."""
    count = 0

    def count_one(*_: Any) -> None:
        nonlocal count
        count += 1
        if count > limit:
            raise _TooManyTensors

    registers = (
        module_hooks.register_module_module_registration_hook,
        module_hooks.register_module_parameter_registration_hook,
        module_hooks.register_module_buffer_registration_hook,
    )
    handles = [register(count_one) for register in registers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _build(path: Path, class_path: str, init_args: dict[str, Any], num_tensors: int) -> nn.Module:
    """The network on the meta device (shapes without memory), built within the registration budget."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise InputError(path, f"network class {class_path!r} does not exist in this medmtl version") from err
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise InputError(path, f"{class_path!r} is not a network class")
    try:
        with _registration_budget(_REGISTRATIONS_PER_TENSOR * num_tensors), torch.device("meta"):
            return cls(**init_args)
    except _TooManyTensors:
        raise InputError(
            path, f"asks for a {name} larger than the {num_tensors} tensors of its weights can fill"
        ) from None
    except Exception as err:  # a constructor given arguments it cannot take may raise anything
        detail = " ".join(str(err).split())[:200]
        raise InputError(path, f"cannot build {name} from its stored configuration ({detail})") from err


def _load_weights(path: Path, model: nn.Module, state: dict[str, Any], name: str) -> None:
    """Check ``state`` against the meta-device ``model`` (names, shapes, total size), then materialise the
    model on the CPU and copy the weights in."""

    def load() -> None:
        try:
            with warnings.catch_warnings():
                # Into meta tensors the copy is a no-op that still checks every name and shape.
                warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
                warnings.filterwarnings("ignore", message="Casting complex values to real")
                model.load_state_dict(state, strict=True)
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as err:
            detail = " ".join(str(err).split())
            raise InputError(
                path, f"weights do not match the stored {name} configuration ({detail[:300]})"
            ) from err

    load()
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}.values()
    size = sum(t.numel() * t.element_size() for t in tensors)
    file_size = path.stat().st_size
    if size > _BYTES_PER_FILE_BYTE * file_size:
        raise InputError(
            path, f"describes a {name} of {size} bytes, more than its {file_size} bytes can hold"
        )
    # to_empty leaves memory uninitialised: every tensor must then come from the checkpoint.
    unsaved = sorted(set(dict(model.named_buffers())) - set(state))
    if unsaved:
        raise InputError(
            path, f"{name} has buffers that checkpoints do not save ({', '.join(unsaved)[:200]})"
        )
    model.to_empty(device="cpu")
    load()
    for key, tensor in model.state_dict().items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not torch.isfinite(tensor).all():
            raise InputError(path, f"holds NaN or Inf weights ({key}); did the training run diverge?")


def load_network(path: str | os.PathLike) -> tuple[nn.Module, Mapping[str, Any]]:
    """(the network a ``medmtl fit`` checkpoint describes, its weights loaded; the checkpoint's hyper-parameters).

    Raises ``InputError(path, what)`` for a missing file, a file that is not a checkpoint, a checkpoint of
    another kind of model, or weights that do not fit its configuration.
    """
    path = Path(path)
    checkpoint = _load_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters")
    hparams = hparams if isinstance(hparams, Mapping) else {}
    class_path, init_args = _model_config(path, hparams)
    prefix = "model."
    state = {
        k[len(prefix) :]: v
        for k, v in checkpoint["state_dict"].items()
        if isinstance(k, str) and k.startswith(prefix)
    }
    if not state:
        raise InputError(path, f"holds no network weights (no state_dict key starts with {prefix!r})")
    model = _build(path, class_path, init_args, len(state))
    _load_weights(path, model, state, class_path.rpartition(".")[2])
    return model, hparams


def place_network(network: Any, device: torch.device) -> Any:
    """``network`` ready to run on ``device``: a torch module in eval mode, moved there; anything else (an
    onnxruntime network) as it is, which runs on the CPU only. Raises ``InputError`` for another device."""
    if isinstance(network, nn.Module):
        return network.eval().to(device)
    if device.type != "cpu":
        raise InputError("device", f"{device} asked for, but an ONNX model runs on the CPU here")
    return network


class Predictor:
    """Reconstructs and segments k-space volumes with a trained network.

    Args:
        model: a network called as ``model(kspace, mask, acs_mask)`` (shapes in ``predict_volume``) whose
            output has ``recon`` (B, H, W) and ``seg_logits`` (B, K, H, W): a ``ReconSegNet`` or an exported
            one run by onnxruntime (``medmtl.onnx_model.OnnxNetwork``, see ``from_onnx``); ``recon`` may be
            None for a segmentation-only network (the zero-filled image is returned then).
        classes: class names, index = label.
        device: where to run.
        batch_size: slices per forward pass.
        tta: mirror test-time augmentation (as nnU-Net's): each batch also runs mirrored along H (k-space
            reversed along H) and along W (k-space and mask reversed along W, so the same lines are sampled at
            mirrored positions); the three softmaxes and magnitudes are mirrored back and averaged. Three
            forward passes instead of one.
    """

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        require_segmentation: bool = True,
        tta: bool = False,
    ):
        if batch_size < 1:
            raise InputError("batch_size", f"must be at least 1, got {batch_size}")
        tasks = tuple(getattr(model, "tasks", ("seg",)))
        if require_segmentation and "seg" not in tasks:
            raise InputError("model", f"has no segmentation task (tasks {list(tasks)}); predictions need one")
        self.device = torch.device(device)
        self.model = place_network(model, self.device)
        self.classes = tuple(classes)
        self.batch_size = batch_size
        self.segments = "seg" in tasks
        self.tta = tta

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        require_segmentation: bool = True,
        tta: bool = False,
    ) -> Predictor:
        """Build the network a ``medmtl fit`` checkpoint describes and load its weights.

        ``require_segmentation=False`` also accepts reconstruction-only networks (for ``run``). Raises ``InputError(path, what)`` for a missing file, a file that is not a checkpoint, or a
        checkpoint of another kind of model or whose weights do not fit its configuration.
        """
        model, hparams = load_network(path)
        classes = hparams.get("class_names")
        if classes is not None and not (
            isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)
        ):
            raise InputError(path, f"records class names {classes!r:.80} that are not a list of strings")
        num_classes = getattr(model, "num_classes", None)
        segments = "seg" in getattr(model, "tasks", ("seg",))
        if segments and (not classes or (num_classes is not None and len(classes) != num_classes)):
            raise InputError(
                path, f"records class names {classes!r} that do not fit the network's {num_classes} classes"
            )
        try:
            return cls(
                model,
                classes or (),
                device=device,
                batch_size=batch_size,
                require_segmentation=require_segmentation,
                tta=tta,
            )
        except InputError as err:
            raise InputError(path, f"holds a network that {err.what}") from err

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike,
        batch_size: int = 1,
        threads: int | None = None,
        require_segmentation: bool = True,
        tta: bool = False,
    ) -> Predictor:
        """Load a network exported by ``medmtl export`` (onnxruntime, CPU); the same interface and outputs
        as ``from_checkpoint`` within the export's verified tolerance. Raises ``InputError(path, what)`` for a
        missing, corrupt or foreign file or another task's model."""
        from medmtl.onnx_model import OnnxNetwork

        network = OnnxNetwork(path, threads=threads)
        try:
            return cls(
                network,
                network.classes,
                batch_size=batch_size,
                require_segmentation=require_segmentation,
                tta=tta,
            )
        except InputError as err:
            raise InputError(path, f"holds a network that {err.what}") from err

    @classmethod
    def load(cls, path: str | os.PathLike, **options: Any) -> Predictor:
        """``from_onnx`` for a ``.onnx`` file, else ``from_checkpoint``; ``options`` go to that one."""
        loader = cls.from_onnx if Path(path).suffix.lower() == ".onnx" else cls.from_checkpoint
        return loader(path, **options)

    def predict_volume(
        self,
        kspace: np.ndarray,
        mask: np.ndarray,
        progress: Callable[[int], Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reconstruct and segment every slice: ``run`` for a network that segments (arguments and results
        there)."""
        if not self.segments:
            raise InputError("model", "has no segmentation task; predictions need one")
        recon, seg = self.run(kspace, mask, progress)
        assert seg is not None
        return recon, seg

    @torch.inference_mode()
    def run(
        self,
        kspace: np.ndarray,
        mask: np.ndarray,
        progress: Callable[[int], Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Reconstruct (and segment, where the network does) every slice.

        Args:
            kspace: (S, C, H, W) complex multi-coil k-space (zeros off the mask, or fully sampled: it is masked
                here either way).
            mask: (W,), (1, W) or (H, W) sampling mask, nonzero = sampled.
            progress: called with the number of slices done after every batch (a tqdm ``update``, say).

        Returns:
            reconstruction (S, H, W) float32 in the intensity units of the input's coil-combined image, and
            segmentation (S, H, W) uint8, None for a network without a segmentation task.
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
            recon, probabilities = self._forward(
                chunk / scale[..., None, None],
                mask_t.expand(b, -1, -1, -1, -1),
                acs_t.expand(b, -1, -1, -1, -1),
            )
            recons.append((recon * scale).cpu().numpy())
            if probabilities is not None:
                segs.append(probabilities.argmax(dim=1).to(torch.uint8).cpu().numpy())
            if progress is not None:
                progress(b)
        return np.concatenate(recons).astype(np.float32, copy=False), np.concatenate(segs) if segs else None

    def _forward(
        self, kspace: torch.Tensor, mask: torch.Tensor, acs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Magnitude (B, H, W) float32 and softmax (B, K, H, W) or None, averaged over the ``tta`` views.

        kspace (B, C, H, W, 2), mask and acs (B, 1, Hm, W, 1). A view mirrors the image dimension ``dim`` of
        k-space and mask; mirroring about the centre index, i -> (2 (n // 2) - i) mod n, reverses the centred
        FFT's image along the same dimension, for odd and even n alike, so the outputs are mirrored back with
        the same map (a mask with Hm = 1 is its own mirror along H)."""
        recon_sum, prob_sum = None, None
        # (the inputs' dimension, the outputs'): H, W are -3, -2 of k-space and mask, -2, -1 of the outputs
        views = ((None, None), (-3, -2), (-2, -1)) if self.tta else ((None, None),)
        for dim, out_dim in views:
            out = self.model(*(_mirror(x, dim) for x in (kspace, mask, acs)))
            if out.recon is not None:
                recon = _mirror(out.recon.float(), out_dim)
                recon_sum = recon if recon_sum is None else recon_sum + recon
            if out.seg_logits is not None:
                prob = _mirror(out.seg_logits.float().softmax(dim=1), out_dim)
                prob_sum = prob if prob_sum is None else prob_sum + prob
        n = len(views)
        # a segmentation-only network: the zero-filled image, the same in every view
        recon = rss_image(kspace) if recon_sum is None else recon_sum / n
        return recon, None if prob_sum is None else prob_sum / n


def _mirror(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    """``x`` mirrored along ``dim`` about the centre index, i -> (2 (n // 2) - i) mod n; ``x`` for None."""
    if dim is None:
        return x
    n = x.shape[dim]
    index = (2 * (n // 2) - torch.arange(n, device=x.device)) % n
    return x.index_select(dim, index)
