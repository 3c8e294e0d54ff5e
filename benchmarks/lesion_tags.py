"""Where a lesion model's tag AUC falls short: the AUC of every tag over all held-out lesions, by lesion size
and by one tag group (by default the lesion's intensity, hyper- or hypointense).

The pairs are those ``medmtl test`` scores tags on: the detections of ``decode_detections`` (its defaults, the
refined tags) on the key slices of ``--split``, matched greedily to the lesions at IoU >= 0.5
(``medmtl.metrics.lesion.greedy_match`` at ``MATCH_IOU``), so the "all" row's mean is the test's
``tag_auc_mean``. Size is the geometric mean of the box sides in pixels (``benchmarks/lesion_sizes.py``).

    .venv/bin/python benchmarks/lesion_tags.py --checkpoint models/lesion_mni/model.ckpt --split test
"""

from __future__ import annotations

import numpy as np
from lesion_sizes import box_sizes, held_out, held_out_parser, key_slice_detections

from medmtl.metrics.lesion import MATCH_IOU, box_iou, greedy_match
from medmtl.metrics.tag_metrics import tag_auc


def match_detections(found, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(detection indices, lesion indices) of the pairs ``medmtl test`` scores tags on: ``found``'s
    detections by descending score, matched greedily to the boxes ``truth`` (N, 4) at ``MATCH_IOU``."""
    order = np.argsort(-found.scores, kind="mergesort")
    match = greedy_match(box_iou(found.boxes[order].astype(np.float64), truth), MATCH_IOU)
    return order[match >= 0], match[match >= 0]


def matched_pairs(net, dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tag probabilities (K, T), tag labels (K, T), lesion sizes (K,)) of the matched pairs."""
    probs, labels, sizes = [], [], []
    for truth, tags, found in key_slice_detections(net, dataset):
        det, gt = match_detections(found, truth)
        probs.append(found.tags[det])
        labels.append(np.asarray(tags, np.float64).reshape(len(truth), len(net.tag_names))[gt])
        sizes.append(box_sizes(truth[gt]))
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(sizes)


def table(names, probs, labels, rows: dict[str, np.ndarray]) -> str:
    """One row per subset of the pairs: its count, mean AUC and every tag's AUC ("-" where undefined)."""
    lines = ["| pairs | n | mean | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 3)]
    for name, keep in rows.items():
        auc = tag_auc(probs[keep], labels[keep]) if keep.any() else np.full(len(names), np.nan)
        cells = ["-" if np.isnan(a) else f"{a:.2f}" for a in auc]
        mean = f"{np.nanmean(auc):.3f}" if np.isfinite(auc).any() else "-"
        lines.append(f"| {name} | {int(keep.sum())} | {mean} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = held_out_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--group", nargs="+", default=["hyperintense", "hypointense"], help="tags to split by"
    )
    args = parser.parse_args()
    net, dataset = held_out(args)
    names = list(net.tag_names)
    unknown = [g for g in args.group if g not in names]
    if unknown:
        parser.error(f"--group: {', '.join(unknown)} not among the model's tags ({', '.join(names)})")
    probs, labels, sizes = matched_pairs(net, dataset)
    rows = {"all": np.ones(len(sizes), bool), "< 6 px": sizes < 6, ">= 6 px": sizes >= 6}
    rows |= {g: labels[:, names.index(g)] > 0 for g in args.group}
    print(f"{args.checkpoint}, {args.split} key slices, pairs matched at IoU >= {MATCH_IOU}:")
    print(table(names, probs, labels, rows))


if __name__ == "__main__":
    main()
