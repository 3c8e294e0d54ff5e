"""Exported medmtl networks run by onnxruntime: ``OnnxNetwork`` (recon+seg), ``OnnxLesionNetwork`` (lesions),
``open_onnx`` (either, by the file's task), and the contract ``medmtl export`` writes.

An exported file is an ordinary ONNX model whose ``metadata_props`` say what it is (``META_*`` below): the
medmtl version, the task, the network's tasks, class or tag names, the input contract, how inputs are
normalised, and the errors measured against PyTorch when it was exported. The loaders refuse a file without
them, so a model from elsewhere or of another task gives one clear line instead of a shape error deep in a run.

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

from medmtl.errors import ConfigError, InputError
from medmtl.keys import Keys
from medmtl.models.lesion_net import POSITIONS, LesionOutput, reads_patient_frame
from medmtl.models.lesion_net import TASKS as LESION_TASKS
from medmtl.transforms.context import check_context_layout

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
META_TAG_NAMES = "medmtl_tag_names"
META_CONTRACT = "medmtl_input_contract"

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


TASK_LESION = "lesion"
# The task whose head makes each LesionOutput field (the field is None without it).
_LESION_FIELD_TASK = {
    "heatmap": "det",
    "refined_heatmap": "refine",
    "size": "det",
    "offset": "det",
    "tags": "tag",
    "refined_tags": "refine",
    "mask": "mask",
}


def output_names(tasks) -> list[str]:
    """The graph outputs of a recon+seg network with these tasks, in order."""
    return [RECON_OUTPUT] * ("recon" in tasks) + [SEG_OUTPUT] * ("seg" in tasks)


def lesion_input_names(num_clinical: int, patient_frame: bool = False) -> list[str]:
    """The graph inputs of a lesion network with ``num_clinical`` non-imaging inputs that reads the patient
    frame or not (``LesionNet.reads_patient_frame``), in order."""
    return (
        [Keys.CONTEXT.value, Keys.SLICE_POSITION.value]
        + [Keys.CLINICAL.value] * (num_clinical > 0)
        + [Keys.PATIENT_FRAME.value] * patient_frame
    )


# Rank of each lesion graph input.
_LESION_INPUT_RANKS = {
    Keys.CONTEXT.value: 4,
    Keys.SLICE_POSITION.value: 1,
    Keys.CLINICAL.value: 2,
    Keys.PATIENT_FRAME.value: 3,
}


def lesion_output_names(tasks) -> list[str]:
    """The graph outputs of a lesion network with these tasks: ``LesionOutput``'s fields it produces."""
    return [name for name in LesionOutput._fields if _LESION_FIELD_TASK[name] in tasks]


def lesion_input_doc(num_slices: int, num_clinical: int, patient_frame: bool = False) -> dict[str, str]:
    """``META_INPUTS`` of a lesion export: each graph input's shape and meaning."""
    doc = {
        Keys.CONTEXT.value: f"(B, {num_slices}, H, W) float32 normalised slice stack, key slice at the centre",
        Keys.SLICE_POSITION.value: "(B,) float32 key slice index / (slices in the volume - 1)",
    }
    if num_clinical:
        doc[Keys.CLINICAL.value] = f"(B, {num_clinical}) float32 non-imaging inputs, as in training"
    if patient_frame:
        doc[Keys.PATIENT_FRAME.value] = (
            "(B, 3, 3) float32 RAS+ mm of each key slice's pixel grid, columns: step along H, step along W, "
            "pixel (0, 0) minus the volume's centre voxel (medmtl.data.lesion_dataset.patient_frame)"
        )
    return doc


def lesion_normalisation(window: tuple[float, float] | None) -> str:
    """``META_NORMALISATION`` of a lesion export: how the volume becomes ``context`` (outside the graph)."""
    if window is None:
        return (
            "per volume, outside the graph: (x - p0.5) / (p99.5 - p0.5) with the volume's 0.5th and 99.5th "
            "intensity percentiles, no clipping (medmtl.data.lesion_dataset.intensity_range)"
        )
    return f"outside the graph: clip to the window [{window[0]:g}, {window[1]:g}] of the volume's units, map to [0, 1]"


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


def _require_task(path: Path, metadata: dict[str, str], task: str) -> None:
    found = metadata.get(META_TASK)
    if found != task:
        raise InputError(path, f"holds a {found!r} model; this needs a {task!r} model")


def _run(session: Any, path: Path, feeds: dict[str, np.ndarray], what: str) -> list[np.ndarray]:
    try:
        return session.run(None, feeds)
    except Exception as err:  # onnxruntime's pybind errors for shapes the graph cannot take
        detail = " ".join(str(err).split()).split("] ", 1)[-1][:200]
        raise InputError(path, f"cannot run on {what} ({detail})") from err


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
        _require_task(self.path, self.metadata, TASK_RECON_SEG)
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

    @staticmethod
    def feeds(kspace: torch.Tensor, mask: torch.Tensor, acs_mask: torch.Tensor) -> dict[str, np.ndarray]:
        """The graph's inputs for ``__call__``'s arguments: masks expanded to (B, 1, H, W, 1), float32 numpy."""
        b, _, h, w, _ = kspace.shape
        return {
            "kspace": kspace.detach().float().cpu().contiguous().numpy(),
            "mask": _rows(mask, b, h, w),
            "acs_mask": _rows(acs_mask, b, h, w),
        }

    def __call__(self, kspace: torch.Tensor, mask: torch.Tensor, acs_mask: torch.Tensor) -> OnnxOutput:
        """kspace (B, C, H, W, 2); mask, acs_mask (B, 1, Hm, W, 1) with Hm = 1 or H -> ``OnnxOutput``."""
        feeds = self.feeds(kspace, mask, acs_mask)
        results = _run(self.session, self.path, feeds, f"k-space of shape {tuple(kspace.shape)}")
        named = dict(zip(self.outputs, (torch.from_numpy(r) for r in results), strict=True))
        return OnnxOutput(named.get(RECON_OUTPUT), named.get(SEG_OUTPUT))


def _rows(mask: torch.Tensor, b: int, h: int, w: int) -> np.ndarray:
    """(B or 1, 1, 1 or H, W, 1) -> (B, 1, H, W, 1) float32 numpy, the graph's mask layout."""
    return np.ascontiguousarray(mask.detach().float().cpu().expand(b, 1, h, w, 1).numpy())


class OnnxLesionNetwork:
    """A ``LesionNet`` exported by ``medmtl export``, called like it and carrying its input contract.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (default: torch's thread count).

    Attributes read from the metadata, as ``LesionNet`` has them: ``tasks``, ``tag_names``, ``num_tags``,
    ``num_slices``, ``interval_mm``, ``window`` (None or (low, high)), ``num_clinical``, ``refine_position``
    and ``reads_patient_frame``; ``normalisation``
    is the text of ``META_NORMALISATION``.

    Raises ``InputError`` for a missing, corrupt or foreign file, another task's model, metadata that does not
    describe a lesion network, or graph inputs and outputs that do not follow the contract (module docstring).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.path = Path(path)
        self.session, self.metadata = _open(self.path, threads or torch.get_num_threads())
        _require_task(self.path, self.metadata, TASK_LESION)
        tasks = _json_list(self.path, self.metadata, META_TASKS)
        if "det" not in tasks or not set(tasks) <= set(LESION_TASKS):
            raise InputError(
                self.path, f"metadata {META_TASKS} {tasks} are not lesion tasks ({', '.join(LESION_TASKS)})"
            )
        self.tasks = tuple(t for t in LESION_TASKS if t in tasks)
        self.tag_names = tuple(_json_list(self.path, self.metadata, META_TAG_NAMES))
        self.num_tags = len(self.tag_names)
        contract = _lesion_contract(self.path, self.metadata)
        self.num_slices, self.interval_mm, self.window, self.num_clinical, self.refine_position = contract
        self.reads_patient_frame = reads_patient_frame(self.tasks, self.refine_position)
        self.normalisation = self.metadata.get(META_NORMALISATION, "")
        inputs = [(i.name, len(i.shape)) for i in self.session.get_inputs()]
        names = lesion_input_names(self.num_clinical, self.reads_patient_frame)
        expected = [(name, _LESION_INPUT_RANKS[name]) for name in names]
        if inputs != expected:
            raise InputError(
                self.path, f"has graph inputs {inputs}; a lesion export has {expected} (name, rank)"
            )
        slices = self.session.get_inputs()[0].shape[1]
        if slices != self.num_slices:
            raise InputError(
                self.path, f"takes {slices} context slices, but its metadata says {self.num_slices}"
            )
        self.outputs = [o.name for o in self.session.get_outputs()]
        wanted = lesion_output_names(self.tasks)
        if self.outputs != wanted:
            raise InputError(
                self.path, f"has graph outputs {self.outputs}; its tasks {list(self.tasks)} need {wanted}"
            )

    def __call__(
        self,
        context: torch.Tensor,
        slice_position: torch.Tensor | None = None,
        clinical: torch.Tensor | None = None,
        patient_frame: torch.Tensor | None = None,
    ) -> LesionOutput:
        """context (B, S, H, W); slice_position (B,) in [0, 1]; clinical (B, E); patient_frame (B, 3, 3) ->
        ``LesionOutput`` of float32 CPU tensors, None for the heads the tasks leave out. As ``LesionNet``, the
        other inputs are needed only by the score refinement (clinical when E > 0, the frame when it reads
        patient positions)."""
        context = torch.as_tensor(context)
        if context.dim() != 4 or context.shape[1] != self.num_slices:
            raise InputError(
                Keys.CONTEXT.value, f"expected (B, {self.num_slices}, H, W), got {tuple(context.shape)}"
            )
        b = context.shape[0]
        if slice_position is None:
            if "refine" in self.tasks and not self.reads_patient_frame:
                raise InputError(
                    Keys.SLICE_POSITION.value, "the score refinement needs the key slice's position (B,)"
                )
            slice_position = torch.zeros(b)  # a graph input the network never reads then
        position = _numpy(slice_position).reshape(-1)
        if position.size != b:
            raise InputError(Keys.SLICE_POSITION.value, f"expected ({b},), got {tuple(position.shape)}")
        feeds = {Keys.CONTEXT.value: _numpy(context), Keys.SLICE_POSITION.value: position}
        if self.num_clinical:
            shape = None if clinical is None else tuple(clinical.shape)
            if shape != (b, self.num_clinical):
                raise InputError(
                    Keys.CLINICAL.value,
                    f"the score refinement needs ({b}, {self.num_clinical}) inputs, got {shape}",
                )
            feeds[Keys.CLINICAL.value] = _numpy(clinical)
        if self.reads_patient_frame:
            shape = None if patient_frame is None else tuple(patient_frame.shape)
            if shape != (b, 3, 3):
                raise InputError(
                    Keys.PATIENT_FRAME.value,
                    f"the score refinement needs ({b}, 3, 3) patient frames, got {shape}",
                )
            feeds[Keys.PATIENT_FRAME.value] = _numpy(patient_frame)
        results = _run(self.session, self.path, feeds, f"a context of shape {tuple(context.shape)}")
        named = dict(zip(self.outputs, (torch.from_numpy(r) for r in results), strict=True))
        return LesionOutput(*(named.get(name) for name in LesionOutput._fields))


def _lesion_contract(
    path: Path, metadata: dict[str, str]
) -> tuple[int, float, tuple[float, float] | None, int, str]:
    """(num_slices, interval_mm, window, num_clinical, refine_position) from ``META_CONTRACT``, checked;
    exports made before ``refine_position`` existed refine on array positions."""
    try:
        contract = json.loads(metadata.get(META_CONTRACT, "null"))
        num_slices, interval_mm = contract["num_slices"], contract["interval_mm"]
        window, num_clinical = contract["window"], contract["num_clinical"]
        check_context_layout(num_slices, interval_mm)
        if window is not None:
            low, high = (float(v) for v in window)
            if not (np.isfinite([low, high]).all() and low < high):
                raise ValueError(f"window {window} is not (low, high) with low < high")
            window = (low, high)
        if isinstance(num_clinical, bool) or not (isinstance(num_clinical, int) and num_clinical >= 0):
            raise ValueError(f"num_clinical {num_clinical!r} is not a whole number >= 0")
        refine_position = contract.get("refine_position", "array")
        if refine_position not in POSITIONS:
            raise ValueError(f"refine_position {refine_position!r} is not one of {', '.join(POSITIONS)}")
    except (json.JSONDecodeError, TypeError, KeyError, ValueError, ConfigError) as err:
        raise InputError(path, f"metadata {META_CONTRACT} is not a lesion input contract ({err})") from err
    return int(num_slices), float(interval_mm), window, num_clinical, refine_position


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A float32 contiguous numpy copy or view of a tensor or array, for onnxruntime."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def open_onnx(path: str | os.PathLike, threads: int | None = None) -> OnnxNetwork | OnnxLesionNetwork:
    """The loader of a ``medmtl export`` file's task: ``OnnxNetwork`` or ``OnnxLesionNetwork``. Raises
    ``InputError`` as they do, and for a task this medmtl does not run."""
    task = read_metadata(path).get(META_TASK)
    loaders = {TASK_RECON_SEG: OnnxNetwork, TASK_LESION: OnnxLesionNetwork}
    if task not in loaders:
        raise InputError(
            path, f"holds a {task!r} model; this medmtl runs {' and '.join(map(repr, loaders))} models"
        )
    return loaders[task](path, threads)
