"""Exported medmtl networks run by onnxruntime: ``OnnxNetwork``, and the contract ``medmtl export`` writes.

An exported file is an ordinary ONNX model whose ``metadata_props`` say what it is (``META_*`` below): the
medmtl version, the task, the network's tasks, class names, the input contract, how inputs are normalised,
and the errors measured against PyTorch when it was exported. ``OnnxNetwork`` refuses a file without them,
so a model from elsewhere or of another task gives one clear line instead of a shape error deep in a run.

Recon+seg contract (``TASK_RECON_SEG``); B, C, H and W are dynamic:

- inputs ``kspace`` (B, C, H, W, 2) float32, masked multi-coil k-space (any intensity scale: the graph
  divides by the zero-filled maximum itself); ``mask`` and ``acs_mask`` (B, 1, H, W, 1) float32, the sampling
  mask and its calibration region (1D masks are broadcast over rows outside the graph);
- outputs ``reconstruction`` (B, H, W) in the input's units, where the network reconstructs, and
  ``segmentation_logits`` (B, K, H, W), where it segments.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from medmtl.errors import InputError

FORMAT_VERSION = "1"
META_FORMAT = "medmtl_format"
META_VERSION = "medmtl_version"
META_TASK = "medmtl_task"
META_TASKS = "medmtl_tasks"
META_CLASSES = "medmtl_classes"
META_INPUTS = "medmtl_inputs"
META_OUTPUTS = "medmtl_outputs"
META_NORMALISATION = "medmtl_normalisation"
META_PRECISION = "medmtl_precision"
META_SOURCE = "medmtl_source"
META_VERIFICATION = "medmtl_verification"

TASK_RECON_SEG = "recon_seg"
RECON_SEG_INPUTS = ("kspace", "mask", "acs_mask")
RECON_OUTPUT = "reconstruction"
SEG_OUTPUT = "segmentation_logits"
RECON_SEG_INPUT_DOC = {
    "kspace": "(B, C, H, W, 2) float32 masked multi-coil k-space, real and imaginary last",
    "mask": "(B, 1, H, W, 1) float32 sampling mask, 1 = sampled",
    "acs_mask": "(B, 1, H, W, 1) float32 the fully sampled calibration region of the mask",
}
RECON_SEG_NORMALISATION = (
    "none needed outside the graph: it divides k-space by the maximum of the zero-filled RSS image and "
    "multiplies the reconstruction back, so outputs are in the input's units"
)


def output_names(tasks) -> list[str]:
    """The graph outputs of a recon+seg network with these tasks, in order."""
    return [RECON_OUTPUT] * ("recon" in tasks) + [SEG_OUTPUT] * ("seg" in tasks)


class OnnxOutput(NamedTuple):
    """What ``OnnxNetwork`` returns, named like ``ReconSegOutput`` so ``Predictor`` takes either.

    recon: (B, H, W) float32 tensor, or None for a network without reconstruction.
    seg_logits: (B, K, H, W) float32 tensor, or None for a network without segmentation.
    """

    recon: torch.Tensor | None
    seg_logits: torch.Tensor | None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, checked to be a medmtl export. Raises ``InputError``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "is a folder, not an ONNX file" if path.is_dir() else "no such ONNX file")
    return _metadata(path)


def _open(path: Path, threads: int) -> tuple[Any, dict[str, str]]:
    import onnxruntime as ort

    if path.is_dir():
        raise InputError(path, "is a folder, not an ONNX file")
    if not path.is_file():
        raise InputError(path, "no such ONNX file")
    metadata = _metadata(path)
    # onnxruntime logs a refused allocation through its process-wide logger before it raises; the user gets
    # the InputError line instead.
    ort.set_default_logger_severity(4)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # only fatal: every failure reaches the user as one InputError line
    try:
        session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
        detail = " ".join(str(err).split())
        detail = detail.split("] ", 1)[-1][:200]
        raise InputError(path, f"is not a loadable ONNX model ({detail})") from err
    return session, metadata


def _metadata(path: Path) -> dict[str, str]:
    """The medmtl metadata of the file, read by protobuf before onnxruntime sees the graph, so a foreign or
    damaged file is named as such rather than failing somewhere in onnxruntime."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model(os.fspath(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as err:
        detail = " ".join(str(err).split())[:120] or type(err).__name__
        raise InputError(path, f"is not a loadable ONNX model (protobuf: {detail})") from err
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    if metadata.get(META_FORMAT) is None:
        raise InputError(path, "is an ONNX model but not one written by `medmtl export` (no medmtl metadata)")
    if metadata[META_FORMAT] != FORMAT_VERSION:
        raise InputError(
            path, f"has medmtl export format {metadata[META_FORMAT]!r}; this medmtl reads {FORMAT_VERSION!r}"
        )
    return metadata


def _json_list(path: Path, metadata: dict[str, str], key: str) -> list[str]:
    try:
        value = json.loads(metadata.get(key, "[]"))
    except json.JSONDecodeError as err:
        raise InputError(path, f"metadata {key} is not JSON ({err})") from err
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise InputError(path, f"metadata {key} is not a list of strings: {value!r:.80}")
    return value


class OnnxNetwork:
    """A recon+seg network exported by ``medmtl export``, called like ``ReconSegNet``.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (default: torch's thread count).

    Raises ``InputError`` for a missing, corrupt or foreign file, another task's model, or one whose graph
    inputs and outputs do not follow the contract in the module docstring.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.path = Path(path)
        self.session, self.metadata = _open(self.path, threads or torch.get_num_threads())
        task = self.metadata.get(META_TASK)
        if task != TASK_RECON_SEG:
            raise InputError(self.path, f"holds a {task!r} model; this needs a {TASK_RECON_SEG!r} model")
        self.tasks = tuple(_json_list(self.path, self.metadata, META_TASKS))
        self.classes = tuple(_json_list(self.path, self.metadata, META_CLASSES))
        self.num_classes = len(self.classes)
        inputs = [(i.name, len(i.shape)) for i in self.session.get_inputs()]
        expected = [(name, 5) for name in RECON_SEG_INPUTS]
        if inputs != expected:
            raise InputError(
                self.path, f"has graph inputs {inputs}; a recon-seg export has {expected} (name, rank)"
            )
        self.outputs = [o.name for o in self.session.get_outputs()]
        wanted = output_names(self.tasks)
        if self.outputs != wanted:
            raise InputError(
                self.path, f"has graph outputs {self.outputs}; its tasks {list(self.tasks)} need {wanted}"
            )

    def __call__(self, kspace: torch.Tensor, mask: torch.Tensor, acs_mask: torch.Tensor) -> OnnxOutput:
        """kspace (B, C, H, W, 2); mask, acs_mask (B, 1, Hm, W, 1) with Hm = 1 or H -> ``OnnxOutput``."""
        b, _, h, w, _ = kspace.shape
        feeds = {
            "kspace": kspace.detach().float().cpu().contiguous().numpy(),
            "mask": _rows(mask, b, h, w),
            "acs_mask": _rows(acs_mask, b, h, w),
        }
        try:
            results = self.session.run(None, feeds)
        except Exception as err:  # onnxruntime's pybind errors for shapes the graph cannot take
            detail = " ".join(str(err).split()).split("] ", 1)[-1][:200]
            raise InputError(
                self.path, f"cannot run on k-space of shape {tuple(kspace.shape)} ({detail})"
            ) from err
        named = dict(zip(self.outputs, (torch.from_numpy(r) for r in results), strict=True))
        return OnnxOutput(named.get(RECON_OUTPUT), named.get(SEG_OUTPUT))


def _rows(mask: torch.Tensor, b: int, h: int, w: int) -> np.ndarray:
    """(B or 1, 1, 1 or H, W, 1) -> (B, 1, H, W, 1) float32 numpy, the graph's mask layout."""
    return np.ascontiguousarray(mask.detach().float().cpu().expand(b, 1, h, w, 1).numpy())
