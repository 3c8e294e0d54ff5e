"""What a joint recon+seg checkpoint's segmenter makes of other images than the one it reads.

On the MNI validation slices (as ``recon_seg_eval.py``: same slices, masks and Dice, and the same seed unless
``--seed`` draws other coils and noise; one forward pass, as ``medmtl recon-seg --no-tta``), per acceleration,
the checkpoint's own segmentation U-Net applied to:

- the final cascade's magnitude (``ReconSegNet(segment_refined=False)``);
- the refined magnitude, after the refiner (``segment_refined=True``), for a network that has one;
- the fully sampled target: the segmenter's own errors, without the reconstruction's.

The row of the setting the checkpoint holds is marked "(as shipped)". The target is divided by the network's
``input_scale``, as the network divides its own magnitudes.

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


def probe(predictor: Predictor, data: dict) -> dict[str, np.ndarray]:
    """{image name: segmentation (S, H, W)} for the images of the module docstring."""
    net = predictor.model
    shipped = net.segment_refined
    rows = {}
    for refined in (False, True) if net.refiner is not None else (False,):
        net.segment_refined = refined
        name = "the refined magnitude" if refined else "the final cascade's magnitude"
        rows[name + (" (as shipped)" if refined == shipped else "")] = predictor.run(
            data["kspace"], data["mask"]
        )[1]
    net.segment_refined = shipped
    # The target stands in for the whole reconstruction; the mask only sets the network's intensity scale.
    kspace = kspace_to_tensor(data["kspace"])
    scale = input_scale(ifft2c(kspace * mask_tensor(data["mask"], kspace.shape[-2])[0]))[:, None, None]
    with torch.inference_mode():
        logits = net.seg_net((torch.from_numpy(data["target"]) / scale).unsqueeze(1))
    rows["the fully sampled target"] = logits.argmax(dim=1).to(torch.uint8).numpy()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser, args = checkpoint_args(__doc__, argv)
    predictor = Predictor.from_checkpoint(args.checkpoint, batch_size=4)
    if not {"recon", "seg"} <= set(getattr(predictor.model, "tasks", ())):
        parser.error(f"--checkpoint {args.checkpoint}: not a joint or sequential recon+seg network")
    print("| acceleration | the segmenter reads | Dice GM | Dice WM |\n|---|---|---|---|")
    for acceleration in args.accelerations:
        data = validation_data(acceleration, args.seed)
        for name, seg in probe(predictor, data).items():
            row = metrics(data["target"], data["target"], seg, data["labels"])
            print(f"| {acceleration:g}x | {name} | {row['dice_gm']:.3f} | {row['dice_wm']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
