"""Lesion evaluation inside ``MultitaskModule``: validation and test metrics of a ``LesionNet``.

Every evaluated image (a slice with its context, ``medmtl.data.lesion_dataset``) goes through the post-processing
that inference uses (``decode_detections``) into ``medmtl.metrics.lesion.LesionMetrics``: FROC at IoU 0.5 and
0.1, COCO mAP, tag AUC and F1 on matched pairs, the mask Dice on ground-truth boxes (the mask head's foreground
inside each true box, MULAN's protocol) and the RECIST diameter error of matched detections.

Tag F1 needs per-tag thresholds chosen on another set: every validation epoch chooses them
(``choose_tag_thresholds`` on its matched pairs) and keeps them in a buffer, so the checkpoint carries them and
``medmtl test`` applies the thresholds of the last validation to the test set.

Under DDP each process evaluates its share of the images; ``compute`` gathers every process's per-image records
(small: scores, match flags, tag pairs, Dice values and axis errors, no images) so that every process returns
the metrics of the union.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from medmtl.keys import Keys
from medmtl.metrics.lesion import LesionMetrics
from medmtl.metrics.lesion_plot import plot_lesion_metrics
from medmtl.metrics.tag_metrics import choose_tag_thresholds
from medmtl.models.lesion_decode import decode_detections, instance_masks

# LesionMetrics' per-image state: lists that concatenate across processes, and counters that add up.
_LISTS = ("_scores", "_coco_matches", "_tag_probs", "_tag_labels", "_axis_errors", "_dice")
_COUNTS = ("num_images", "num_lesions")


class LesionEvaluation(nn.Module):
    """Accumulates one stage's lesion metrics; a module only to carry the chosen tag thresholds in checkpoints.

    Args:
        tag_names: the network's tag names (T).
        refined: decode with the score-refinement outputs where the network has them (False: the raw heads).
    """

    def __init__(self, tag_names: tuple[str, ...], refined: bool = True):
        super().__init__()
        self.tag_names = tuple(tag_names)
        self.refined = refined
        # NaN until a validation chose them; F1 is then left out.
        self.register_buffer("tag_thresholds", torch.full((len(tag_names),), float("nan")))
        self.metrics = LesionMetrics()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "tag_thresholds"
        saved = state_dict.get(key)
        if saved is not None and saved.shape != self.tag_thresholds.shape:
            # Thresholds for other tags than this network's (a detection-only network saved before it had no
            # tag metrics): unusable, so left unchosen, as before a validation.
            state_dict[key] = self.tag_thresholds.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def update_called(self) -> bool:
        return self.metrics.num_images > 0

    @torch.no_grad()
    def update(self, out: Any, batch: Mapping[str, Any]) -> None:
        """Add a batch: ``out`` a ``LesionOutput``, ``batch`` from ``collate_lesion_samples``."""
        context = batch[Keys.CONTEXT]
        detections = decode_detections(
            out, context.shape[-2:], batch[Keys.PIXEL_SPACING], refined=self.refined
        )
        mask = out.mask
        for b, det in enumerate(detections):
            gt_boxes = torch.as_tensor(batch[Keys.BOXES][b], dtype=torch.float32)
            gt_masks = batch[Keys.MASKS][b]
            box_masks = None
            if mask is not None:
                logits = mask[b, 0].detach().float().cpu()
                box_masks = instance_masks(logits, gt_boxes)
            self.metrics.update(
                det.boxes,
                det.scores,
                det.tags,
                gt_boxes,
                batch[Keys.TAGS][b] if det.tags.shape[1] else np.zeros((len(gt_boxes), 0)),
                masks=det.masks,
                diameters=np.stack((det.long_axis_mm, det.short_axis_mm), axis=1),
                gt_masks=gt_masks if mask is not None else None,
                gt_diameters=batch[Keys.DIAMETERS][b],
                gt_box_masks=box_masks,
            )

    def _gather(self) -> None:
        """Replace this process's state by the union over every process (a no-op in one process)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        mine = {name: getattr(self.metrics, name) for name in (*_LISTS, *_COUNTS, "_tp", "num_tags")}
        states: list[dict] = [None] * dist.get_world_size()  # type: ignore[list-item]
        dist.all_gather_object(states, mine)
        for name in _LISTS:
            setattr(self.metrics, name, [x for s in states for x in s[name]])
        for name in _COUNTS:
            setattr(self.metrics, name, sum(s[name] for s in states))
        self.metrics._tp = {t: [x for s in states for x in s["_tp"][t]] for t in self.metrics._tp}
        self.metrics.num_tags = next((s["num_tags"] for s in states if s["num_tags"] is not None), None)

    def compute(self, stage: str, choose_thresholds: bool) -> tuple[dict[str, float], dict]:
        """(scalar metrics named ``<stage>/...`` for the logger, the full ``LesionMetrics.compute`` result).

        ``choose_thresholds`` (validation): first choose the tag thresholds on this set's matched pairs.
        """
        self._gather()
        if choose_thresholds and self.tag_names:
            probs, labels = self.metrics.tag_pairs()
            if len(probs):
                chosen = choose_tag_thresholds(probs, labels)
                self.tag_thresholds.copy_(torch.as_tensor(chosen, dtype=torch.float32))
        thresholds = self.tag_thresholds.cpu().numpy()
        known = self.tag_names and not np.isnan(thresholds).any()  # inf: chosen, never predicted
        result = self.metrics.compute(tag_thresholds=thresholds if known else None)
        values = {}
        for iou, curve in result["froc"].items():
            for rate, sensitivity in curve["at"].items():
                values[f"{stage}/sens@{rate:g}fp_iou{iou:g}"] = sensitivity
            values[f"{stage}/froc_iou{iou:g}"] = curve["score"]
        values[f"{stage}/mAP"] = result["mAP"]
        values[f"{stage}/score_at_1fp"] = result["score_at_1fp"]
        names = ["dice_mean", "long_axis_mae_mm", "short_axis_mae_mm"]
        if self.tag_names:  # a network without the tag task has no tag metrics, not NaN ones
            names += ["tag_auc_mean", "tag_f1_mean"]
        values.update({f"{stage}/{k}": result[k] for k in names if k in result})
        values[f"{stage}/num_lesions"] = float(result["num_lesions"])
        return {k: float(v) for k, v in values.items()}, result

    def plot(self, result: dict, path: str | os.PathLike) -> None:
        """FROC curves and per-tag AUC bars of ``result`` as a PNG."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        plot_lesion_metrics(result, path, list(self.tag_names))

    def reset(self) -> None:
        self.metrics.reset()
