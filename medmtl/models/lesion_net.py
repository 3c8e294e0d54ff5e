"""``LesionNet``: MULAN's multitask lesion analysis (detection, tagging, segmentation, score refinement) rebuilt
as a dense, exportable network.

MULAN (Yan et al. 2019) is a Mask R-CNN: region proposals, RoIAlign, per-RoI box, mask and tag heads, NMS
between stages and a refinement layer over the RoIs' scores. Those data-dependent steps inside the graph
export poorly (ONNX has RoiAlign and NonMaxSuppression, but their semantics differ from torchvision's, they
fix the number of RoIs or need loops, and onnxruntime runs them slowly on CPU). Here every head is dense,
anchor-free and CenterNet-style (Zhou et al. 2019) on the trunk's stride-4 map (``medmtl.models.lesion_trunk``):

- detection: a centre heatmap logit (focal loss against Gaussian peaks), the log box extents (i, j) in
  pixels and the sub-pixel centre offset, both regressed at the lesion centres (L1 + GIoU). Anchor-free: no
  anchor sizes, ratios or matching thresholds to tune for lesions from 3 to 300 pixels;
- tags: T logits per cell, supervised at the lesion centres with MULAN's weighted BCE and hard-example mining;
  with ``tag_pooling="cell"`` from the cell's features (CenterNet's head), with ``"box"`` from the cell's
  features and the mean features over the core, shell and surround of the box the detection head predicts
  there (``medmtl.models.lesion_tag_head``: MULAN's RoI features, kept dense), with ``"contour"`` also the
  angular spectra of the features on rings about that box (its outline: lobes);
- masks: one full-resolution lesion-foreground logit map (a small decoder over the stride-2 and stride-1
  features; Dice + BCE against the union of the instance masks); a detection's mask is that map inside its
  box (``medmtl.models.lesion_decode``);
- score refinement: MULAN re-predicts a lesion's score and tags from its detection and tag scores, its box and
  its slice position (and optionally age and sex) with a small fully connected layer. Here the same inputs are
  maps (heatmap logit, T tag logits, log box size, the cell's position and non-imaging inputs broadcast), so
  the layer is a 1x1-convolution MLP that refines every cell at once. The position is, with
  ``refine_position="array"`` (MULAN's), the normalised (i, j) array position and the slice position; with
  ``"patient"``, the cell's RAS+ position in the patient relative to the volume's centre, in units of
  ``PATIENT_SCALE_MM``, from ``Keys.PATIENT_FRAME`` (``medmtl.data.lesion_dataset.patient_frame``), which
  means the same in every slice orientation (array positions do not: the hemisphere lies along j in an axial
  slice and along k in a sagittal one). Its output is its
  input logits plus a correction that starts at zero (MULAN starts its layer as the identity too), and it
  takes its inputs detached: it learns to re-score the heads' outputs without pulling the heads towards
  outputs that are easier to re-score, so the heads' losses mean the same with and without it, and the
  ablation's rows differ only by the refinement. It is trained with the detection and tag losses.

``forward`` returns only dense tensors, the ONNX outputs; peaks, top-k, boxes, NMS and instance masks are
``medmtl.models.lesion_decode.decode_detections``, shared by the PyTorch and the ONNX paths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from medmtl.data.lesion_sim import TAG_NAMES
from medmtl.errors import ConfigError, InputError
from medmtl.keys import Keys
from medmtl.losses import dice_ce_loss
from medmtl.models.lesion_decode import STRIDE, LesionTargets, encode_targets
from medmtl.models.lesion_losses import DEFAULT_NEGATIVE_RATIO, box_loss, centre_focal_loss, tag_loss
from medmtl.models.lesion_tag_head import DEFAULT_POOLED_CHANS, BoxPooledTagHead
from medmtl.models.lesion_trunk import (
    DEFAULT_FUSE_FROM,
    DEFAULT_WIDTHS,
    LesionTrunk,
    conv_norm_act,
    pad_to,
    upsample2,
)
from medmtl.models.unet import crop_to
from medmtl.transforms.context import DEFAULT_INTERVAL_MM, DEFAULT_NUM_SLICES, check_context_layout

TASKS = ("det", "tag", "mask", "refine")
POSITIONS = ("array", "patient")
TAG_POOLINGS = ("cell", "box", "contour", "outline")


def reads_patient_frame(tasks: Sequence[str], refine_position: str) -> bool:
    """Whether a lesion network with these tasks and ``refine_position`` needs the slices' patient frames
    (``LesionNet`` and its ONNX export, ``medmtl.onnx_model.OnnxLesionNetwork``, share this rule)."""
    return "refine" in tasks and refine_position == "patient"


# Patient positions enter the refinement in units of 10 cm: about -1 to 1 over a head, -3 to 3 over a body.
PATIENT_SCALE_MM = 100.0
# CenterNet's heatmap bias: every cell starts at probability 0.1, so the many background cells do not swamp
# the first steps of the focal loss.
_HEATMAP_PRIOR = 0.1


class LesionOutput(NamedTuple):
    """What ``LesionNet.forward`` returns; a head the tasks leave out gives None. h, w = ceil(H / 4), ceil(W / 4).

    heatmap: (B, 1, h, w) lesion-centre logits. refined_heatmap: (B, 1, h, w) after score refinement.
    size: (B, 2, h, w) log box extents (i, j) in pixels. offset: (B, 2, h, w) centre within its cell, in cells.
    tags: (B, T, h, w) tag logits. refined_tags: (B, T, h, w) after score refinement.
    mask: (B, 1, H, W) lesion-foreground logits.
    """

    heatmap: torch.Tensor
    refined_heatmap: torch.Tensor | None
    size: torch.Tensor
    offset: torch.Tensor
    tags: torch.Tensor | None
    refined_tags: torch.Tensor | None
    mask: torch.Tensor | None


def dense_head(in_chans: int, out_chans: int, bias: float = 0.0) -> nn.Sequential:
    """CenterNet's head: 3x3 convolution, SiLU, 1x1 convolution to ``out_chans`` with bias ``bias``."""
    head = nn.Sequential(
        nn.Conv2d(in_chans, in_chans, 3, padding=1), nn.SiLU(inplace=True), nn.Conv2d(in_chans, out_chans, 1)
    )
    nn.init.constant_(head[-1].bias, bias)
    return head


class LesionNet(nn.Module):
    """Dense multitask lesion network (see the module docstring).

    Args:
        num_tags: tags T.
        tasks: the heads and losses, ``"det"`` always among them; ``"refine"`` needs ``"tag"``. The ablation
            runs ("det",), ("det", "tag"), ("det", "tag", "mask") and all four.
        num_slices, widths, fuse_from: the trunk's (``LesionTrunk``).
        head_chans: channels of the stride-4 map the heads read; None takes ``widths[1]``.
        num_clinical: non-imaging inputs E (e.g. 2 for age and sex) the refinement reads; 0 for none.
        refine_hidden: hidden channels of the refinement MLP.
        tag_pos_weight: (T,) weight of each tag's positives in the tag loss (e.g. negatives / positives in
            the training set); None weighs all 1.
        tag_negative_ratio: hardest negative tags kept per positive tag of a lesion (``lesion_losses``).
        tag_names: the T tag names (index = tag id); None takes the simulator's ``TAG_NAMES`` when T matches
            them, else ``tag0`` .. ``tag{T-1}``.
        interval_mm: the distance between context slices the network was trained with.
        window: the intensity window (low, high) in the volume's units mapped to [0, 1], or None for the
            per-volume 0.5-99.5 percentile scaling (``medmtl.data.lesion_dataset.intensity_range``).
        refine_position: what position the refinement reads: ``"array"`` (normalised array and slice
            position, MULAN's) or ``"patient"`` (the patient frame; see the module docstring).
        tag_pooling: what the tag head reads: ``"cell"`` (the cell's features), ``"box"`` (also the means
            over its predicted box's regions, ``medmtl.models.lesion_tag_head.BoxPooledTagHead``) or
            ``"contour"`` (as ``"box"``, and the contour spectra about that box) or ``"outline"`` (as ``"box"``,
            and the spectra of the key image on rings about that box, at full resolution).
        tag_chans: channels of the box-pooled features (every ``tag_pooling`` but ``"cell"``).

    ``num_slices``, ``interval_mm``, ``window``, ``num_clinical`` and ``refine_position`` are the network's input
    contract: the training data, the
    volume inference (``medmtl lesion``) and the ONNX metadata all read them from here.
    """

    def __init__(
        self,
        num_tags: int = len(TAG_NAMES),
        tasks: Sequence[str] = TASKS,
        num_slices: int = DEFAULT_NUM_SLICES,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        fuse_from: int = DEFAULT_FUSE_FROM,
        head_chans: int | None = None,
        num_clinical: int = 0,
        refine_hidden: int = 32,
        tag_pos_weight: Sequence[float] | None = None,
        tag_negative_ratio: float = DEFAULT_NEGATIVE_RATIO,
        tag_names: Sequence[str] | None = None,
        interval_mm: float = DEFAULT_INTERVAL_MM,
        window: Sequence[float] | None = None,
        refine_position: str = "array",
        tag_pooling: str = "cell",
        tag_chans: int = DEFAULT_POOLED_CHANS,
    ):
        super().__init__()
        tasks = tuple(tasks)
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or "det" not in tasks or len(set(tasks)) != len(tasks):
            raise ConfigError(
                "tasks", f"{list(tasks)}: distinct tasks of {', '.join(TASKS)}, 'det' among them"
            )
        if "refine" in tasks and "tag" not in tasks:
            raise ConfigError("tasks", "'refine' re-scores the tag logits, so it needs 'tag'")
        if "tag" in tasks and num_tags < 1:
            raise ConfigError("num_tags", f"must be at least 1 with the tag task, got {num_tags}")
        if num_clinical < 0 or refine_hidden < 1 or not tag_negative_ratio >= 0:
            raise ConfigError(
                "LesionNet",
                f"num_clinical >= 0, refine_hidden >= 1 and tag_negative_ratio >= 0, got {num_clinical}, "
                f"{refine_hidden} and {tag_negative_ratio}",
            )
        check_context_layout(num_slices, interval_mm)
        if refine_position not in POSITIONS:
            raise ConfigError("refine_position", f"{refine_position!r}; choose from {', '.join(POSITIONS)}")
        self.refine_position = refine_position
        if tag_pooling not in TAG_POOLINGS:
            raise ConfigError("tag_pooling", f"{tag_pooling!r}; choose from {', '.join(TAG_POOLINGS)}")
        if tag_chans < 1:
            raise ConfigError("tag_chans", f"must be at least 1, got {tag_chans}")
        self.tag_pooling = tag_pooling
        if window is not None and not (len(window) == 2 and float(window[0]) < float(window[1])):
            raise ConfigError("window", f"must be (low, high) with low < high, or null, got {window}")
        if tag_names is None:
            tag_names = TAG_NAMES if num_tags == len(TAG_NAMES) else [f"tag{i}" for i in range(num_tags)]
        if len(tag_names) != num_tags or len(set(tag_names)) != num_tags:
            raise ConfigError("tag_names", f"need {num_tags} distinct names, got {list(tag_names)}")
        self.tag_names = tuple(str(t) for t in tag_names)
        self.num_slices = int(num_slices)
        self.interval_mm = float(interval_mm)
        self.window = None if window is None else (float(window[0]), float(window[1]))
        self._tasks = tuple(t for t in TASKS if t in tasks)
        self.num_tags = int(num_tags)
        self.num_clinical = int(num_clinical)
        self.tag_negative_ratio = float(tag_negative_ratio)
        self.trunk = LesionTrunk(num_slices, widths, head_chans, fuse_from)
        chans = self.trunk.out_chans
        self.heatmap_head = dense_head(chans, 1, bias=-math.log(1 / _HEATMAP_PRIOR - 1))
        self.size_head = dense_head(chans, 2)
        self.offset_head = dense_head(chans, 2, bias=0.5)
        pos_weight = None
        if "tag" in self._tasks:
            self.tag_head = (
                dense_head(chans, num_tags)
                if tag_pooling == "cell"
                else BoxPooledTagHead(
                    chans,
                    self.trunk.widths[0],
                    num_tags,
                    tag_chans,
                    contour=tag_pooling == "contour",
                    outline=tag_pooling == "outline",
                )
            )
            if tag_pos_weight is not None:
                pos_weight = torch.as_tensor(tag_pos_weight, dtype=torch.float32).flatten()
                if pos_weight.numel() != num_tags or not bool((pos_weight > 0).all()):
                    raise ConfigError(
                        "tag_pos_weight", f"need {num_tags} positive weights, got {list(tag_pos_weight)}"
                    )
        self.register_buffer("tag_pos_weight", pos_weight)
        if "mask" in self._tasks:
            c1, c2 = self.trunk.stem_chans, self.trunk.widths[0]
            self.mask_in = conv_norm_act(chans, c2)
            self.mask_mid = conv_norm_act(c2, c1)
            self.mask_top = conv_norm_act(c1, c1)
            self.mask_out = nn.Conv2d(c1, 1, 1)
        if "refine" in self._tasks:
            # heatmap logit, T tag logits, log size (2), position (array: i, j, slice; patient: R, A, S),
            # clinical inputs
            in_chans = 1 + num_tags + 2 + 3 + num_clinical
            self.refiner = nn.Sequential(
                nn.Conv2d(in_chans, refine_hidden, 1),
                nn.SiLU(inplace=True),
                nn.Conv2d(refine_hidden, 1 + num_tags, 1),
            )
            nn.init.zeros_(self.refiner[-1].weight)
            nn.init.zeros_(self.refiner[-1].bias)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this network has heads and losses for, in ``TASKS`` order."""
        return self._tasks

    @property
    def reads_patient_frame(self) -> bool:
        """Whether ``forward`` needs ``patient_frame`` (a score refinement on patient positions)."""
        return reads_patient_frame(self._tasks, self.refine_position)

    def forward(
        self,
        context: torch.Tensor,
        slice_position: torch.Tensor | None = None,
        clinical: torch.Tensor | None = None,
        patient_frame: torch.Tensor | None = None,
    ) -> LesionOutput:
        """context (B, S, H, W) (``Keys.CONTEXT``); slice_position (B,) in [0, 1] (``Keys.SLICE_POSITION``),
        clinical (B, E) non-imaging inputs and patient_frame (B, 3, 3) (``Keys.PATIENT_FRAME``), read by the
        refinement only: the position its ``refine_position`` names, and clinical inputs when E > 0."""
        if context.dim() != 4:
            raise InputError("context", f"expected (B, S, H, W), got {tuple(context.shape)}")
        height, width = context.shape[2], context.shape[3]
        h, w = (height + STRIDE - 1) // STRIDE, (width + STRIDE - 1) // STRIDE
        # Padded here, once, so that every map inside is an exact power-of-two reduction of the padded input
        # (the trunk's own padding and cropping become no-ops) and only the outputs are cropped.
        features = self.trunk(pad_to(context, self.trunk.multiple))
        x = features.stride4
        heatmap, size, offset = (
            crop_to(head(x), h, w) for head in (self.heatmap_head, self.size_head, self.offset_head)
        )
        tags = None
        if "tag" in self._tasks:
            if self.tag_pooling != "cell":
                # The stride-2 map of the input's pixels, without the padding: boxes clip to the image.
                stride2 = crop_to(features.stride2, (height + 1) // 2, (width + 1) // 2)
                centre = context.shape[1] // 2
                tags = self.tag_head(x, stride2, size, offset, context[:, centre : centre + 1])
            else:
                tags = crop_to(self.tag_head(x), h, w)
        mask = None
        if "mask" in self._tasks:
            m = self.mask_mid(upsample2(self.mask_in(x)) + features.stride2)
            mask = crop_to(self.mask_out(self.mask_top(upsample2(m) + features.stride1)), height, width)
        refined_heatmap = refined_tags = None
        if "refine" in self._tasks:
            refined = self._refine(heatmap, tags, size, slice_position, clinical, patient_frame)
            refined_heatmap, refined_tags = refined[:, :1], refined[:, 1:]
        return LesionOutput(heatmap, refined_heatmap, size, offset, tags, refined_tags, mask)

    def forward_batch(self, batch: Mapping[str, Any]) -> LesionOutput:
        """``forward`` on a ``collate_lesion_samples`` batch (what ``MultitaskModule`` calls); non-imaging
        inputs come from ``Keys.CLINICAL`` (B, E) and patient frames from ``Keys.PATIENT_FRAME`` (B, 3, 3)
        when the batch has them."""
        return self(
            batch[Keys.CONTEXT],
            batch.get(Keys.SLICE_POSITION),
            batch.get(Keys.CLINICAL),
            batch.get(Keys.PATIENT_FRAME),
        )

    def _positions(self, heatmap, slice_position, patient_frame) -> torch.Tensor:
        """(B, 3, h, w) position of every cell's centre, as ``refine_position`` says."""
        b, _, h, w = heatmap.shape
        dtype, device = heatmap.dtype, heatmap.device
        if self.refine_position == "patient":
            if patient_frame is None or tuple(patient_frame.shape) != (b, 3, 3):
                got = None if patient_frame is None else tuple(patient_frame.shape)
                raise InputError(
                    "patient_frame", f"the score refinement needs ({b}, 3, 3) patient frames, got {got}"
                )
            # Cell u covers pixels STRIDE u .. STRIDE u + STRIDE - 1: its centre is pixel STRIDE u + (STRIDE - 1) / 2.
            rows = torch.arange(h, dtype=dtype, device=device) * STRIDE + (STRIDE - 1) / 2
            cols = torch.arange(w, dtype=dtype, device=device) * STRIDE + (STRIDE - 1) / 2
            frame = patient_frame.to(dtype) / PATIENT_SCALE_MM
            return (
                frame[:, :, 2, None, None]
                + frame[:, :, 0, None, None] * rows[None, None, :, None]
                + frame[:, :, 1, None, None] * cols[None, None, None, :]
            )
        if slice_position is None:
            raise InputError("slice_position", "the score refinement needs the key slice's position (B,)")
        rows = (torch.arange(h, dtype=dtype, device=device) + 0.5) / h
        cols = (torch.arange(w, dtype=dtype, device=device) + 0.5) / w
        return torch.cat(
            (
                rows[None, None, :, None].expand(b, 1, h, w),
                cols[None, None, None, :].expand(b, 1, h, w),
                slice_position.to(dtype).reshape(b, 1, 1, 1).expand(b, 1, h, w),
            ),
            dim=1,
        )

    def _refine(self, heatmap, tags, size, slice_position, clinical, patient_frame) -> torch.Tensor:
        """(B, 1 + T, h, w): the heatmap and tag logits plus the refinement MLP's correction."""
        b, _, h, w = heatmap.shape
        positions = self._positions(heatmap, slice_position, patient_frame)
        if self.num_clinical and (
            clinical is None or clinical.dim() != 2 or clinical.shape[1] != self.num_clinical
        ):
            got = None if clinical is None else tuple(clinical.shape)
            raise InputError(
                "clinical", f"the score refinement needs (B, {self.num_clinical}) inputs, got {got}"
            )
        scores = torch.cat((heatmap, tags), dim=1).detach()
        maps = [scores, size.detach(), positions]
        if self.num_clinical:
            maps.append(clinical.to(heatmap.dtype)[:, :, None, None].expand(b, self.num_clinical, h, w))
        return scores + self.refiner(torch.cat(maps, dim=1))

    def compute_losses(self, out: LesionOutput, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Scalar loss per task (see the module docstring), from a ``collate_lesion_samples`` batch:
        ``Keys.BOXES`` (and ``Keys.TAGS`` with tags, ``Keys.MASKS`` with masks) lists of per-image values.

        det: focal loss + log-size L1 + offset L1 + (1 - GIoU). tag: weighted, hard-example-mined BCE at the
        lesion centres. mask: Dice + BCE of the mask logits against the union of the instance masks (Dice
        over the whole batch, so an image without lesions counts through the BCE and the batch's Dice).
        refine: the focal loss and the tag loss of the refined outputs.
        """
        h, w = out.heatmap.shape[-2:]
        device = out.heatmap.device
        targets = self._targets(batch, h, w, device)
        heatmap_target = torch.stack([t.heatmap for t in targets])
        # Flat (batch, cell) indices of every lesion centre, to gather the heads' values there.
        index = torch.cat([t.cells + i * h * w for i, t in enumerate(targets)])

        def at_centres(x: torch.Tensor) -> torch.Tensor:
            return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])[index]

        cells = torch.cat([t.cells for t in targets])
        losses = {
            "det": centre_focal_loss(out.heatmap, heatmap_target)
            + box_loss(
                at_centres(out.size),
                at_centres(out.offset),
                cells,
                torch.cat([t.size for t in targets]),
                torch.cat([t.offset for t in targets]),
                torch.cat([t.boxes for t in targets]),
                w,
                STRIDE,
            )
        }
        if "tag" in self._tasks:
            tag_target = torch.cat([t.tags for t in targets])
            losses["tag"] = tag_loss(
                at_centres(out.tags), tag_target, self.tag_pos_weight, self.tag_negative_ratio
            )
        if "mask" in self._tasks:
            losses["mask"] = dice_ce_loss(
                out.mask, self._union_masks(batch, out.mask), activation="sigmoid", batch=True
            )
        if "refine" in self._tasks:
            losses["refine"] = centre_focal_loss(out.refined_heatmap, heatmap_target) + tag_loss(
                at_centres(out.refined_tags), tag_target, self.tag_pos_weight, self.tag_negative_ratio
            )
        return losses

    def _targets(self, batch: Mapping[str, Any], h: int, w: int, device: torch.device) -> list[LesionTargets]:
        boxes = batch[Keys.BOXES]
        tags = batch[Keys.TAGS] if "tag" in self._tasks else [None] * len(boxes)
        targets = []
        for b, t in zip(boxes, tags, strict=True):
            b = torch.as_tensor(b, dtype=torch.float32, device=device)
            if t is not None:
                t = torch.as_tensor(t, dtype=torch.float32, device=device)
                if t.shape[-1] != self.num_tags:
                    raise InputError(
                        Keys.TAGS.value, f"{t.shape[-1]} tags per lesion for a {self.num_tags}-tag network"
                    )
            targets.append(encode_targets(b, h, w, tags=t, stride=STRIDE))
        return targets

    @staticmethod
    def _union_masks(batch: Mapping[str, Any], logits: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) float: the union of each image's instance masks, on the logits' H x W."""
        height, width = logits.shape[-2:]
        unions = []
        for masks in batch[Keys.MASKS]:
            masks = torch.as_tensor(masks, device=logits.device)
            if masks.shape[-2:] != (height, width):
                raise InputError(
                    Keys.MASKS.value, f"masks {tuple(masks.shape)} for a {height} x {width} input"
                )
            unions.append(
                masks.reshape(-1, height, width).amax(0, keepdim=True)
                if len(masks)
                else logits.new_zeros(1, height, width)
            )
        return torch.stack(unions).to(logits.dtype)
