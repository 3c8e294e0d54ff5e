"""Lesion inference on whole volumes: ``LesionPredictor`` runs a lesion network on every slice of a volume and
links its detections into 3D findings (``medmtl.lesion_findings``).

Per volume (I, J, K), ``k`` the slice axis, with the network's input contract (``num_slices``,
``interval_mm``, ``window``):

1. every slice's context: ``sample_context`` of the image, then ``(x - low) / (high - low)`` with
   ``(low, high) = intensity_range(image, window)``, clipped to [0, 1] only with a window; that is
   ``medmtl.data.lesion_dataset.slice_sample``'s normalisation, so inference sees what training saw;
2. the network on batches of slices, with slice position ``k / (K - 1)`` (0 for one slice), each slice's
   patient frame (``patient_frame`` of the volume's affine) and, for a network that reads them, the clinical
   inputs (``clinical_inputs``);
3. ``decode_detections`` per slice (pixel spacing from the volume, for the RECIST axes), then linking, the
   findings and the instance-label volume.

The network is anything called as ``network(context (B, S, H, W), slice_position (B,), clinical (B, E) or
None, patient_frame (B, 3, 3))`` that returns ``LesionNet``'s outputs and carries its contract attributes
(``num_slices``, ``interval_mm``, ``window``, ``tag_names``, ``num_clinical``, ``tasks``): a ``LesionNet`` or an
exported one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmtl.data.lesion_dataset import intensity_range, normalise, patient_frame
from medmtl.data.lesion_record import LesionVolume
from medmtl.errors import InputError
from medmtl.inference import load_network, place_network
from medmtl.lesion_findings import (
    LINK_OVERLAP,
    VolumeFindings,
    find_lesions,
    instance_volume,
    slice_detections,
)
from medmtl.models.lesion_decode import decode_detections
from medmtl.transforms.context import sample_context

DEFAULT_BATCH_SIZE = 8
# The network's input contract, which the predictor reads and nothing else.
CONTRACT = ("num_slices", "interval_mm", "window", "tag_names", "num_clinical", "tasks")
# Clinical inputs, in the order of the network's E inputs: age in years / AGE_SCALE_YEARS, sex F = 0, M = 1.
CLINICAL_INPUTS = ("age", "sex")
AGE_SCALE_YEARS = 100.0
_SEX_CODES = {"F": 0.0, "M": 1.0}


def clinical_inputs(meta: Mapping[str, Any], num_clinical: int) -> np.ndarray:
    """(E,) float32 clinical inputs from a volume's ``meta`` (``CLINICAL_INPUTS`` and their encoding above).

    Raises ``InputError`` when the network reads other than age and sex, or when either is missing or bad.
    """
    if num_clinical != len(CLINICAL_INPUTS):
        raise InputError(
            "network",
            f"reads {num_clinical} clinical inputs; medmtl supplies {len(CLINICAL_INPUTS)} "
            f"({', '.join(CLINICAL_INPUTS)})",
        )
    missing = [key for key in CLINICAL_INPUTS if meta.get(key) is None]
    if missing:
        raise InputError(
            "clinical inputs",
            f"the network reads age and sex, and this volume has no {' or '.join(missing)} "
            "(the `medmtl lesion` options --age and --sex give them)",
        )
    try:
        age = float(meta["age"])
    except (TypeError, ValueError):
        age = math.nan
    if not (math.isfinite(age) and age >= 0):
        raise InputError("age", f"must be a number of years >= 0, got {meta['age']!r}")
    sex = str(meta["sex"]).upper()
    if sex not in _SEX_CODES:
        raise InputError("sex", f"must be F or M, got {meta['sex']!r}")
    return np.array([age / AGE_SCALE_YEARS, _SEX_CODES[sex]], np.float32)


class LesionPredictor:
    """Finds lesions in volumes with a trained lesion network (see the module docstring).

    Args:
        network: a ``LesionNet`` or an object with its call signature and contract attributes.
        device: where a torch network runs; other networks run on the CPU.
        batch_size: slices per forward pass.
        score_threshold: least score of a per-slice detection, so of a finding; None keeps
            ``decode_detections``' default.
        link_overlap: least overlap (intersection over the smaller box) of two boxes on adjacent slices
            to link them (``medmtl.lesion_findings``).
    """

    def __init__(
        self,
        network: Any,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
        score_threshold: float | None = None,
        link_overlap: float = LINK_OVERLAP,
    ):
        missing = [name for name in CONTRACT if not hasattr(network, name)]
        if missing:
            raise InputError(
                "network",
                f"is no lesion network (it lacks {', '.join(missing)} of the lesion input contract)",
            )
        if "det" not in network.tasks:
            raise InputError("network", f"has no detection task (tasks {list(network.tasks)})")
        if int(batch_size) != batch_size or batch_size < 1:
            raise InputError("batch_size", f"must be a whole number >= 1, got {batch_size}")
        if score_threshold is not None and not 0 <= score_threshold <= 1:
            raise InputError("score_threshold", f"must be in [0, 1], got {score_threshold}")
        if not 0 < link_overlap <= 1:
            raise InputError("link_overlap", f"must be in (0, 1], got {link_overlap}")
        self.device = torch.device(device)
        self.network = place_network(network, self.device)
        self.batch_size = int(batch_size)
        self.link_overlap = float(link_overlap)
        self._decode_options = {} if score_threshold is None else {"score_threshold": float(score_threshold)}

    @property
    def window(self) -> tuple[float, float] | None:
        """The network's intensity window, None for per-volume percentile scaling."""
        return self.network.window

    @property
    def tag_names(self) -> tuple[str, ...]:
        """The names of the findings' tags; none for a network without the tag task."""
        return tuple(self.network.tag_names) if "tag" in self.network.tasks else ()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **options: Any) -> LesionPredictor:
        """A predictor with the network a ``medmtl fit`` checkpoint describes, weights loaded; ``options``
        as the constructor's. Raises ``InputError(path, what)`` for a missing or foreign file, weights that
        do not fit, or a network that is not a lesion network (a bad option raises its own error)."""
        return cls._of_file(path, load_network(path)[0], options)

    @classmethod
    def load(cls, path: str | os.PathLike, **options: Any) -> LesionPredictor:
        """``from_onnx`` for a ``.onnx`` file, else ``from_checkpoint``."""
        if Path(path).suffix.lower() == ".onnx":
            return cls.from_onnx(path, **options)
        return cls.from_checkpoint(path, **options)

    @classmethod
    def from_onnx(
        cls, path: str | os.PathLike, threads: int | None = None, **options: Any
    ) -> LesionPredictor:
        """A predictor that runs a ``medmtl export``ed lesion network with onnxruntime (CPU); the same
        findings as the checkpoint within the export's verified tolerance. Raises ``InputError(path, what)``
        for a missing, corrupt or foreign file or a recon+seg model."""
        from medmtl.onnx_model import OnnxLesionNetwork

        return cls._of_file(path, OnnxLesionNetwork(path, threads=threads), options)

    @classmethod
    def _of_file(cls, path: str | os.PathLike, network: Any, options: dict[str, Any]) -> LesionPredictor:
        """``cls(network, **options)``, a network it refuses reported as the file's."""
        try:
            return cls(network, **options)
        except InputError as err:
            if err.where != "network":  # a bad option, not a bad file
                raise
            raise InputError(path, f"holds a network that {err.what}") from err

    @torch.inference_mode()
    def predict_volume(
        self, volume: LesionVolume, progress: Callable[[int], Any] | None = None
    ) -> VolumeFindings:
        """Find the lesions of ``volume`` (see the module docstring); ``progress`` is called with the number
        of slices done after every batch (a tqdm ``update``, say). Raises ``InputError(volume.name, what)``
        for an image that is not 3D, a voxel size that is not finite and positive, or missing clinical
        inputs."""
        try:
            return self._predict(volume, progress)
        except InputError as err:
            raise InputError(volume.name, f"{err.where}: {err.what}") from err

    def _predict(self, volume: LesionVolume, progress: Callable[[int], Any] | None) -> VolumeFindings:
        image = np.asarray(volume.image)
        if image.ndim != 3:
            raise InputError("image", f"has shape {image.shape}; expected a 3D volume (I, J, K)")
        spacing = np.asarray(volume.spacing, np.float64)
        if spacing.shape != (3,) or not (np.isfinite(spacing).all() and (spacing > 0).all()):
            raise InputError("spacing", f"{spacing.tolist()} mm; expected three finite voxel sizes > 0")
        network = self.network
        clinical = None
        if network.num_clinical:
            clinical = torch.from_numpy(clinical_inputs(volume.meta, network.num_clinical)).to(self.device)
        window = network.window
        low, high = intensity_range(image, window)
        last = image.shape[2] - 1
        detections = []
        for start in range(0, last + 1, self.batch_size):
            ks = range(start, min(start + self.batch_size, last + 1))
            context = np.stack(
                [sample_context(image, spacing[2], k, network.num_slices, network.interval_mm) for k in ks]
            )
            context = normalise(context, low, high, clip=window is not None)
            position = torch.tensor([k / last if last else 0.0 for k in ks], dtype=torch.float32)
            frames = torch.from_numpy(np.stack([patient_frame(volume.affine, image.shape, k) for k in ks]))
            out = network(
                torch.from_numpy(context).to(self.device),
                position.to(self.device),
                None if clinical is None else clinical.expand(len(ks), -1),
                frames.to(self.device),
            )
            per_slice = decode_detections(out, image.shape[:2], spacing[:2], **self._decode_options)
            for k, found in zip(ks, per_slice, strict=True):
                detections.extend(slice_detections(k, found))
            if progress is not None:
                progress(len(ks))
        findings = find_lesions(detections, volume.affine, self.tag_names, self.link_overlap)
        return VolumeFindings(volume.name, findings, instance_volume(findings, image.shape))
