"""What a joint recon+seg checkpoint's segmenter makes of other images than the one it reads.

On the MNI validation slices (as ``recon_seg_eval.py``: same slices, seed, masks and Dice), per acceleration,
the checkpoint's own segmentation U-Net applied to:

- the final cascade's magnitude, which it reads in the network (as shipped: ``medmtl recon-seg``'s labels);
- the refined magnitude, after the refiner (for a network that has one), which it was never trained on;
- the fully sampled target: the segmenter's own errors, without the reconstruction's.

Each image is divided by the network's ``input_scale``, as the network divides its own magnitudes.

    .venv/bin/python benchmarks/recon_seg_probe.py --checkpoint models/recon_seg_mni/model.ckpt
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from recon_seg_eval import checkpoint_args, mask_tensor, metrics, validation_data

from medmtl.data.files import kspace_to_tensor
from medmtl.fft import ifft2c
from medmtl.inference import Predictor
from medmtl.models.recon_seg import input_scale


class _SegmentOthers(torch.nn.Module):
    """Passes the network through and keeps its segmenter's labels of the refined magnitude."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.refined = net, []

    def forward(self, kspace, mask, acs_mask):
        out = self.net(kspace, mask, acs_mask)
        scale = input_scale(ifft2c(kspace * mask))[:, None, None]
        logits = self.net.seg_net((out.recon / scale).unsqueeze(1))
        self.refined.append(logits.argmax(dim=1).to(torch.uint8).cpu().numpy())
        return out


def probe(predictor: Predictor, data: dict) -> dict[str, np.ndarray]:
    """{image name: segmentation (S, H, W)} for the three images of the module docstring."""
    others = predictor.model
    others.refined.clear()
    _, shipped = predictor.run(data["kspace"], data["mask"])
    rows = {"the final cascade's magnitude (as shipped)": shipped}
    if others.net.refiner is not None:
        rows["the refined magnitude"] = np.concatenate(others.refined)
    # The target stands in for the whole reconstruction; the mask only sets the network's intensity scale.
    kspace = kspace_to_tensor(data["kspace"])
    scale = input_scale(ifft2c(kspace * mask_tensor(data["mask"], kspace.shape[-2])[0]))[:, None, None]
    with torch.inference_mode():
        logits = others.net.seg_net((torch.from_numpy(data["target"]) / scale).unsqueeze(1))
    rows["the fully sampled target"] = logits.argmax(dim=1).to(torch.uint8).numpy()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser, args = checkpoint_args(__doc__, argv)
    predictor = Predictor.from_checkpoint(args.checkpoint, batch_size=4)
    if getattr(predictor.model, "mode", None) not in ("joint", "sequential"):
        parser.error(f"--checkpoint {args.checkpoint}: not a joint or sequential recon+seg network")
    predictor.model = _SegmentOthers(predictor.model)
    print("| acceleration | the segmenter reads | Dice GM | Dice WM |\n|---|---|---|---|")
    for acceleration in args.accelerations:
        data = validation_data(acceleration)
        for name, seg in probe(predictor, data).items():
            row = metrics(data["target"], data["target"], seg, data["labels"])
            print(f"| {acceleration:g}x | {name} | {row['dice_gm']:.3f} | {row['dice_wm']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
