"""Where a lesion model's boxes fall short: how well each held-out lesion is found, by lesion size.

For every lesion of the evaluation images of ``--split`` (the key slices that ``medmtl test`` scores, from the
data section of ``--config``), the best IoU of any detection on its slice (``decode_detections`` with its
defaults: score >= 0.1, so every candidate, not an operating point) and the size of its box, the geometric
mean of the two sides in pixels. The table gives, per size band, how many lesions there are, the share
found at IoU >= 0.1 and >= 0.5 and the mean best IoU. It explains FROC numbers (``medmtl test``), it does
not replace them: a lesion found here may still rank below the false positives of other images.

    .venv/bin/python benchmarks/lesion_sizes.py --checkpoint models/lesion_mni/model.ckpt --split test
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml

from medmtl.data.lesion_data import LesionData, lesion_dataset
from medmtl.data.lesion_dataset import collate_lesion_samples
from medmtl.data.lesion_sim import LesionSimOptions
from medmtl.inference import load_network
from medmtl.keys import Keys
from medmtl.metrics.lesion import box_iou
from medmtl.models.lesion_decode import decode_detections

REPO = Path(__file__).resolve().parents[1]
BANDS = ((0, 4), (4, 6), (6, 10), (10, 20), (20, float("inf")))


def lesion_options(config: Path) -> LesionData:
    """The ``data.lesions`` section of a LightningCLI config as ``LesionData``."""
    section = dict(yaml.safe_load(config.read_text())["data"]["lesions"])
    section["simulation"] = LesionSimOptions(**section.get("simulation", {}))
    return LesionData(**section)


def key_slice_detections(net, dataset, batch_size: int = 8):
    """Per evaluation image of ``dataset``: (its lesions' boxes (N, 4) float64, its item of the batch's
    ``Keys.TAGS``, its ``decode_detections`` result with the decoder's defaults)."""
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            batch = collate_lesion_samples(
                [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            )
            detections = decode_detections(net.forward_batch(batch), batch[Keys.CONTEXT].shape[-2:])
            for truth, tags, found in zip(batch[Keys.BOXES], batch[Keys.TAGS], detections, strict=True):
                yield np.asarray(truth, np.float64).reshape(-1, 4), tags, found


def box_sizes(boxes: np.ndarray) -> np.ndarray:
    """(N,) geometric mean of the sides (in pixels) of boxes (N, 4)."""
    sides = boxes[:, 2:] - boxes[:, :2]
    return np.sqrt(sides.prod(axis=1))


def best_ious(net, dataset) -> tuple[np.ndarray, np.ndarray]:
    """(size in pixels, best IoU) of every lesion of ``dataset``'s images."""
    sizes, ious = [], []
    for truth, _, found in key_slice_detections(net, dataset):
        sizes.extend(box_sizes(truth))
        overlap = box_iou(truth, found.boxes) if len(found.boxes) else np.zeros((len(truth), 1))
        ious.extend(overlap.max(axis=1))
    return np.asarray(sizes), np.asarray(ious)


def table(sizes: np.ndarray, ious: np.ndarray) -> str:
    lines = [
        "| lesion size, px | lesions | found at IoU >= 0.1 | at IoU >= 0.5 | mean best IoU |",
        "|---|---|---|---|---|",
    ]
    for low, high in (*BANDS, (0, float("inf"))):
        band = (sizes >= low) & (sizes < high)
        if band.any():
            name = "all" if (low, high) == (0, float("inf")) else f"{low}-{high:g}"
            found = [np.mean(ious[band] >= t) for t in (0.1, 0.5)]
            lines.append(
                f"| {name} | {band.sum()} | {found[0]:.2f} | {found[1]:.2f} | {ious[band].mean():.2f} |"
            )
    return "\n".join(lines)


def held_out_parser(description: str) -> argparse.ArgumentParser:
    """The arguments of the held-out lesion analyses: ``--checkpoint``, ``--config``, ``--split``, ``--threads``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "lesion_mni.yaml")
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--threads", type=int, default=2)
    return parser


def held_out(args: argparse.Namespace):
    """(network, the key-slice dataset of ``args.split``) from ``held_out_parser``'s arguments."""
    torch.set_num_threads(args.threads)
    net = load_network(args.checkpoint)[0].eval()
    dataset = lesion_dataset(
        lesion_options(args.config), args.split, 0, None, net.num_slices, net.interval_mm, net.window
    )
    return net, dataset


def main() -> None:
    net, dataset = held_out(args := held_out_parser(__doc__.split("\n\n")[0]).parse_args())
    print(f"{args.checkpoint}, {args.split} key slices ({len(dataset)} images):")
    print(table(*best_ious(net, dataset)))


if __name__ == "__main__":
    main()
