"""``export_lesion_onnx``: a ``LesionNet`` to a verified ONNX file (the lesion contract of ``medmtl.onnx_model``).

The steps are ``medmtl.export``'s (``write_verified``): trace with B, H and W dynamic, write beside the
destination with the metadata (task, tasks, tag names, the input contract ``num_slices``, ``interval_mm``,
``window``, ``num_clinical``, ``refine_position``, the normalisation, the medmtl version), optionally quantise,
verify, move into place. Verification runs onnxruntime against PyTorch on a seeded real input (the slice with the most lesion
voxels of a simulated default-data volume, ``medmtl.data.lesion_sim``) and on a random one at another batch
and odd size than the trace, and checks two things for each:

- every head output: max |onnx - torch| and that over max |torch|;
- the detections after the shared post-processing (``medmtl.models.lesion_decode.decode_detections`` with
  its defaults): in full precision the same number per image, boxes, scores and tag probabilities within
  ``LESION_TOLERANCES``; in every precision, the agreement of the two sets of detections matched at IoU 0.5.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmtl import __version__
from medmtl.errors import InputError
from medmtl.export import ExportError, ExportReport, GraphSpec, Precision, write_verified
from medmtl.keys import Keys
from medmtl.models.lesion_decode import Detections, decode_detections
from medmtl.models.lesion_net import LesionNet, LesionOutput
from medmtl.onnx_model import (
    FORMAT_VERSION,
    META_CONTRACT,
    META_FORMAT,
    META_INPUTS,
    META_NORMALISATION,
    META_OUTPUTS,
    META_PRECISION,
    META_SOURCE,
    META_TAG_NAMES,
    META_TASK,
    META_TASKS,
    META_VERSION,
    TASK_LESION,
    OnnxLesionNetwork,
    lesion_input_doc,
    lesion_input_names,
    lesion_normalisation,
    lesion_output_names,
)

# Boxes of the two sets of detections are the same lesion when they overlap this much (the NMS default).
MATCH_IOU = 0.5


@dataclass(frozen=True)
class LesionTolerance:
    """Largest accepted differences between onnxruntime and PyTorch (float32) for one precision.

    rel: max |onnx - torch| / max |torch| of every head output.
    mask_agreement: least fraction of pixels whose mask foreground (logit > 0) agrees.
    detection_agreement: least 2 M / (N_torch + N_onnx), M detections matched one to one at IoU >= 0.5;
        None: reported only.
    box_px, score: None, or the detections must be the same: as many per image, paired boxes within
        ``box_px`` pixels in every coordinate, scores and tag probabilities within ``score``.
    """

    rel: float
    mask_agreement: float
    detection_agreement: float | None
    box_px: float | None
    score: float | None


LESION_TOLERANCES: dict[str, LesionTolerance] = {
    # float32 graphs differ from PyTorch only by the order of summation in convolutions and GroupNorm
    # statistics: about 1e-6 relative on a tiny perturbed net, 2e-5 where a window clips most of the slice
    # (GroupNorm of near-constant maps is ill-conditioned in any float32 code). A wrong operator is off by
    # O(1). Boxes then differ by about 1e-5 px (2e-4 in the clipped case) and scores by about 1e-6.
    "fp32": LesionTolerance(rel=1e-4, mask_agreement=0.999, detection_agreement=1.0, box_px=1e-3, score=1e-4),
    # Half precision and int8 change the numbers on purpose (measured on the tiny test net: fp16 up to 2e-3
    # relative, int8 up to 1.2e-1), and a peak near the score threshold may come or go: with few detections
    # one such peak moves the agreement by 100 %, so it is reported, not required. The other bounds only catch
    # a broken graph (off by O(1)); the measured errors go into the metadata and the report for the user.
    "fp16": LesionTolerance(rel=2e-2, mask_agreement=0.98, detection_agreement=None, box_px=None, score=None),
    "int8": LesionTolerance(rel=0.25, mask_agreement=0.9, detection_agreement=None, box_px=None, score=None),
}


@dataclass(frozen=True)
class LesionCaseErrors:
    """How far onnxruntime is from PyTorch on one input.

    output_max_abs, output_max_rel: per graph output, max |onnx - torch| and that over max |torch|.
    torch_detections, onnx_detections: detections over the batch. same_count: as many in every image.
    box_max_abs (pixels), score_max_abs (scores and tag probabilities): over detections paired by their
        nearest box, None unless ``same_count``.
    detection_agreement: see ``LesionTolerance``. mask_agreement: None without a mask head.
    """

    name: str
    shape: tuple[int, ...]
    output_max_abs: dict[str, float]
    output_max_rel: dict[str, float]
    torch_detections: int
    onnx_detections: int
    same_count: bool
    box_max_abs: float | None
    score_max_abs: float | None
    detection_agreement: float
    mask_agreement: float | None

    def summary(self) -> str:
        """The errors in one line of ``medmtl.export.format_report``."""
        worst = max(self.output_max_rel, key=self.output_max_rel.__getitem__)
        parts = [
            f"max rel {self.output_max_rel[worst]:.3g} ({worst}, abs {self.output_max_abs[worst]:.3g})",
            f"detections {self.torch_detections} torch / {self.onnx_detections} onnx",
        ]
        if self.box_max_abs is not None:
            parts.append(f"box {self.box_max_abs:.3g} px score {self.score_max_abs:.3g}")
        parts.append(f"agreement {100 * self.detection_agreement:.1f} %")
        if self.mask_agreement is not None:
            parts.append(f"mask {100 * self.mask_agreement:.4f} %")
        return "  ".join(parts)


class LesionGraph(nn.Module):
    """The exported part of a ``LesionNet``: its graph inputs (``lesion_input_names``: context,
    slice_position[, clinical][, patient_frame]) -> its dense outputs.

    ``half`` runs a float16 copy of the network between float32 inputs and outputs; ``net`` itself is left
    as it is.
    """

    def __init__(self, net: nn.Module, half: bool = False):
        super().__init__()
        if not isinstance(net, LesionNet):
            raise ExportError(f"{type(net).__name__} is not a LesionNet")
        self.net = copy.deepcopy(net).half() if half else net
        self.half = half
        self.names = lesion_input_names(net.num_clinical, net.reads_patient_frame)

    def forward(
        self,
        context: torch.Tensor,
        slice_position: torch.Tensor,
        third: torch.Tensor | None = None,
        fourth: torch.Tensor | None = None,
    ):
        """context (B, S, H, W), slice_position (B,), then clinical (B, E) and patient_frame (B, 3, 3) where
        the network reads them (``self.names``) -> the non-None ``LesionOutput`` fields in its order, float32.
        (Named parameters, not ``*args``: torch.export takes each as one graph input.)"""
        dtype = torch.float16 if self.half else torch.float32
        inputs = (x.to(dtype) for x in (context, slice_position, third, fourth) if x is not None)
        out = call_lesion_network(self.net, tuple(inputs))
        return tuple(x.float() for x in out if x is not None)


def _inputs(net: Any, batch: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Seeded inputs for a network with ``net``'s contract: uniform [0, 1) context, slice position and clinical
    inputs, and patient frames of 0.5 to 1.5 mm pixels in a random orientation, anywhere within 100 mm."""
    gen = torch.Generator().manual_seed(seed)
    context = torch.rand(batch, net.num_slices, height, width, generator=gen)
    position = torch.rand(batch, generator=gen)
    clinical = (torch.rand(batch, net.num_clinical, generator=gen),) if net.num_clinical else ()
    frame = ()
    if net.reads_patient_frame:
        axes = torch.linalg.qr(torch.randn(batch, 3, 3, generator=gen)).Q[:, :, :2]
        steps = axes * (0.5 + torch.rand(batch, 1, 2, generator=gen))
        origin = (torch.rand(batch, 3, 1, generator=gen) - 0.5) * 200
        frame = (torch.cat((steps, origin), dim=2),)
    return context, position, *clinical, *frame


def lesion_real_case(
    net: Any, index: int = 0, seed: int = 0, voxel_mm: float = 2.0
) -> tuple[torch.Tensor, ...]:
    """Graph inputs from the default data: the slice with the most lesion voxels of simulated validation
    volume ``index`` (``voxel_mm`` isotropic), as ``net``'s contract (num_slices, interval_mm, window) samples
    it, batch 1. Clinical inputs, which the simulation has none of, are seeded uniform values."""
    from medmtl.data.lesion_dataset import slice_sample
    from medmtl.data.lesion_sim import LesionSimOptions, simulate_lesion_volume

    volume = simulate_lesion_volume(index, "val", seed, LesionSimOptions(voxel_mm=voxel_mm))
    k = int(np.argmax((volume.instances != 0).sum(axis=(0, 1))))
    sample = slice_sample(volume, k, net.num_slices, net.interval_mm, net.window)
    clinical = _inputs(net, 1, 1, 1, seed)[2 : 2 + (net.num_clinical > 0)]
    frame = (sample[Keys.PATIENT_FRAME][None],) if net.reads_patient_frame else ()
    return sample[Keys.CONTEXT][None], sample[Keys.SLICE_POSITION].reshape(1), *clinical, *frame


def lesion_random_case(
    net: Any, batch: int = 3, height: int = 37, width: int = 29, seed: int = 1
) -> tuple[torch.Tensor, ...]:
    """Seeded random inputs for ``net``'s contract at another batch and odd size than the trace."""
    return _inputs(net, batch, height, width, seed)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Ka, Kb) IoU of two sets of (i0, j0, i1, j1) boxes."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area_a, area_b = ((x[:, 2:] - x[:, :2]).prod(-1) for x in (a, b))
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def _matched(want: Detections, got: Detections) -> int:
    """Detections of ``want`` (by descending score) paired one to one with ``got``'s at IoU >= MATCH_IOU."""
    iou = _iou(want.boxes, got.boxes)
    free = np.ones(len(got.boxes), bool)
    count = 0
    for row in iou:
        candidates = np.where(free & (row >= MATCH_IOU), row, -1.0)
        if len(candidates) and candidates.max() >= 0:
            free[candidates.argmax()] = False
            count += 1
    return count


def _detection_errors(want: list[Detections], got: list[Detections]) -> dict[str, Any]:
    same = all(len(a.boxes) == len(b.boxes) for a, b in zip(want, got, strict=True))
    box = score = 0.0
    for a, b in zip(want, got, strict=True):
        if same and len(a.boxes):
            distance = np.abs(a.boxes[:, None, :] - b.boxes[None, :, :]).max(-1)
            pair = distance.argmin(1)
            box = max(box, float(distance[np.arange(len(pair)), pair].max()))
            score = max(score, float(np.abs(a.scores - b.scores[pair]).max()))
            if a.tags.size:
                score = max(score, float(np.abs(a.tags - b.tags[pair]).max()))
    counts = [sum(len(d.boxes) for d in dets) for dets in (want, got)]
    matched = sum(_matched(a, b) for a, b in zip(want, got, strict=True))
    return {
        "torch_detections": counts[0],
        "onnx_detections": counts[1],
        "same_count": same,
        "box_max_abs": box if same else None,
        "score_max_abs": score if same else None,
        "detection_agreement": 2 * matched / sum(counts) if sum(counts) else 1.0,
    }


def call_lesion_network(net: Any, inputs: tuple[torch.Tensor, ...]) -> Any:
    """``net`` (a ``LesionNet`` or an ``OnnxLesionNetwork``) on graph inputs in ``lesion_input_names`` order
    (context, slice_position[, clinical][, patient_frame]), each passed as the argument it is."""
    names = lesion_input_names(net.num_clinical, net.reads_patient_frame)
    if len(inputs) != len(names):
        raise InputError("inputs", f"{len(inputs)} inputs for a network that takes {', '.join(names)}")
    named = dict(zip(names, inputs, strict=True))
    return net(
        named[Keys.CONTEXT.value],
        named[Keys.SLICE_POSITION.value],
        named.get(Keys.CLINICAL.value),
        named.get(Keys.PATIENT_FRAME.value),
    )


def compare_lesion(net: nn.Module, onnx_net: OnnxLesionNetwork, name: str, inputs) -> LesionCaseErrors:
    """Run the PyTorch network and the ONNX file on ``inputs`` (``call_lesion_network``) and
    compare the outputs and the decoded detections; the PyTorch one is the reference."""
    with torch.inference_mode():
        want = call_lesion_network(net, inputs)
    got = call_lesion_network(onnx_net, inputs)
    max_abs, max_rel = {}, {}
    for field in LesionOutput._fields:
        w, g = getattr(want, field), getattr(got, field)
        if w is not None:
            max_abs[field] = (g - w).abs().max().item()
            max_rel[field] = max_abs[field] / max(w.abs().max().item(), 1e-30)
    size = tuple(inputs[0].shape[-2:])
    detections = _detection_errors(decode_detections(want, size), decode_detections(got, size))
    mask = None
    if want.mask is not None:
        mask = ((got.mask > 0) == (want.mask > 0)).double().mean().item()
    shape = tuple(inputs[0].shape)
    return LesionCaseErrors(name, shape, max_abs, max_rel, **detections, mask_agreement=mask)


def _failures(case: LesionCaseErrors, tol: LesionTolerance) -> list[str]:
    failures = [
        f"{field} max relative error {rel:.3g} > {tol.rel:g}"
        for field, rel in case.output_max_rel.items()
        if not rel <= tol.rel
    ]
    if tol.box_px is not None:
        if not case.same_count:
            failures.append(
                f"{case.torch_detections} detections from PyTorch, {case.onnx_detections} from onnxruntime"
            )
        elif not case.box_max_abs <= tol.box_px:
            failures.append(f"detection boxes differ by {case.box_max_abs:.3g} px > {tol.box_px:g}")
    if tol.score is not None and case.same_count and not case.score_max_abs <= tol.score:
        failures.append(f"detection scores or tags differ by {case.score_max_abs:.3g} > {tol.score:g}")
    if tol.detection_agreement is not None and not case.detection_agreement >= tol.detection_agreement:
        failures.append(f"detection agreement {case.detection_agreement:.3f} < {tol.detection_agreement:g}")
    if case.mask_agreement is not None and not case.mask_agreement >= tol.mask_agreement:
        failures.append(f"mask agreement {case.mask_agreement:.5f} < {tol.mask_agreement:g}")
    return [f"{case.name} input {case.shape}: {f}" for f in failures]


def _metadata(net: LesionNet, precision: str, source: str) -> dict[str, str]:
    contract = {
        "num_slices": net.num_slices,
        "interval_mm": net.interval_mm,
        "window": net.window,
        "num_clinical": net.num_clinical,
        "refine_position": net.refine_position,
    }
    return {
        META_FORMAT: FORMAT_VERSION,
        META_VERSION: __version__,
        META_TASK: TASK_LESION,
        META_TASKS: json.dumps(list(net.tasks)),
        META_TAG_NAMES: json.dumps(list(net.tag_names)),
        META_CONTRACT: json.dumps(contract),
        META_INPUTS: json.dumps(lesion_input_doc(net.num_slices, net.num_clinical, net.reads_patient_frame)),
        META_OUTPUTS: json.dumps(lesion_output_names(net.tasks)),
        META_NORMALISATION: lesion_normalisation(net.window),
        META_PRECISION: precision,
        META_SOURCE: source,
    }


def export_lesion_onnx(
    net: nn.Module,
    output: str | os.PathLike,
    opset: int | None = None,
    precision: Precision = "fp32",
    source: str = "",
    cases: dict[str, tuple[torch.Tensor, ...]] | None = None,
) -> ExportReport:
    """Export ``net`` (a ``LesionNet``) to ``output``, verify it, and move it into place.

    ``cases`` replaces the default verification inputs ({"real": lesion_real_case(net), "random":
    lesion_random_case(net)}). Raises ``ExportError`` when tracing fails or an error is above
    ``LESION_TOLERANCES[precision]``; nothing is written then.
    """
    graph = LesionGraph(net.eval(), half=precision == "fp16").eval()
    names = graph.names
    spec = GraphSpec(
        graph,
        _inputs(net, 2, 32, 40, seed=0),
        tuple((0, 2, 3) if name == Keys.CONTEXT.value else (0,) for name in names),
        names,
        lesion_output_names(net.tasks),
        _metadata(net, precision, source),
    )

    def verify(path: Path) -> tuple[tuple[LesionCaseErrors, ...], list[str]]:
        onnx_net = OnnxLesionNetwork(path)
        chosen = (
            cases if cases is not None else {"real": lesion_real_case(net), "random": lesion_random_case(net)}
        )
        results = tuple(compare_lesion(net, onnx_net, name, inputs) for name, inputs in chosen.items())
        return results, [f for case in results for f in _failures(case, LESION_TOLERANCES[precision])]

    return write_verified(spec, output, opset, precision, verify, type(net).__name__)


__all__ = [
    "LESION_TOLERANCES",
    "LesionCaseErrors",
    "LesionGraph",
    "LesionTolerance",
    "call_lesion_network",
    "compare_lesion",
    "export_lesion_onnx",
    "lesion_random_case",
    "lesion_real_case",
]
