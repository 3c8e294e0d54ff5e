"""How much mirror test-time augmentation would add to a recon+seg checkpoint's Dice on the MNI validation slices.

Not part of `medmtl recon-seg`: this measures whether it would be worth it. For each acceleration it runs the
checkpoint through ``Predictor`` (as ``recon_seg_eval.py`` does, same slices, same seed) on the k-space as
measured and on two mirrored copies, maps each softmax back and averages:

- ``H``: the image mirrored along H (left-right on the axial slices), i.e. k-space reversed along the fully
  sampled readout; the mask is unchanged;
- ``W``: mirrored along W, the phase-encoding axis: k-space and mask reversed, so the same lines are sampled
  at mirrored positions (another equispaced offset).

Mirroring is about the centre index n // 2 of the centred FFT (index i -> (2 (n // 2) - i) mod n), so it is
exact in k-space for odd and even sizes. Dice per class as in ``recon_seg_eval.py``.

    .venv/bin/python benchmarks/recon_seg_tta.py --checkpoint models/recon_seg_mni/model.ckpt
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from recon_seg_eval import checkpoint_args, validation_data

from medmtl.inference import Predictor
from medmtl.metrics.seg import dice_hd95


class _KeepProbabilities(torch.nn.Module):
    """Passes the network through and keeps each batch's segmentation softmax."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.kept = net, []

    def forward(self, *args, **kwargs):
        out = self.net(*args, **kwargs)
        self.kept.append(out.seg_logits.float().softmax(dim=1).cpu())
        return out


def mirror(array, axis: int):
    n = array.shape[axis]
    index = (2 * (n // 2) - np.arange(n)) % n
    return np.take(np.asarray(array), index, axis=axis)


def main(argv: list[str] | None = None) -> int:
    _, args = checkpoint_args(__doc__, argv)
    predictor = Predictor.from_checkpoint(args.checkpoint, batch_size=4)
    keep = predictor.model = _KeepProbabilities(predictor.model)

    def probabilities(kspace, mask) -> np.ndarray:
        keep.kept.clear()
        predictor.run(kspace, mask)
        return torch.cat(keep.kept).numpy()

    print("| acceleration | views | Dice GM | Dice WM |\n|---|---|---|---|")
    for acceleration in args.accelerations:
        data = validation_data(acceleration)
        kspace, mask = data["kspace"], np.asarray(data["mask"])
        views = {
            "as measured": probabilities(kspace, mask),
            "H": mirror(probabilities(mirror(kspace, -2), mask), -2),
            "W": mirror(probabilities(mirror(kspace, -1), mirror(mask, -1)), -1),
        }
        labels = torch.from_numpy(data["labels"]).long()
        for name in ("as measured", "H", "W", "as measured + H", "as measured + W", "as measured + H + W"):
            p = sum(views[v] for v in name.split(" + "))
            dice, _ = dice_hd95(torch.from_numpy(p.argmax(axis=1)), labels, 3)
            gm, wm = (float(np.nanmean(dice[:, k].numpy())) for k in (0, 1))
            print(f"| {acceleration:g}x | {name} | {gm:.3f} | {wm:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
