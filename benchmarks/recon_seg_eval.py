"""Acceptance metrics of reconstruction + segmentation on the MNI validation slices, with classical baselines.

For each acceleration (4x with a 0.08 centre, 8x with 0.04; equispaced, 8 coils, the default noise), this writes
the axial validation slices with ``medmtl data mni`` (seed 0, never trained on) and reports, per row:

- ``zero-filled``: RSS of the zero-filled coil images;
- ``CG-SENSE (true maps)``: ``medmtl.models.cg_sense`` with the simulator's own coil maps, its iteration count
  and Tikhonov weight chosen for the best mean PSNR on every fourth training slice at the same acceleration
  (PSNR, because SSIM prefers a strongly shrunk image whose intensities are off: at 4x the SSIM-best setting
  gave SSIM 0.64 at PSNR 17.7 dB);
- one row per ``--checkpoint NAME=PATH``, run through ``medmtl.inference.Predictor`` exactly as
  ``medmtl recon-seg --no-tta`` does (one forward pass), and one per ``--tta NAME=PATH``, with mirror
  test-time augmentation as ``medmtl recon-seg`` runs by default; rows in the order given. With
  ``--cg-iterations N``, every checkpoint whose data consistency is the proximal (``cg``) step runs N
  conjugate-gradient steps per cascade instead of the number it was trained with.

SSIM is skimage's ``structural_similarity`` (7 x 7 window, data range = the target's maximum) over the whole
slice; PSNR uses the same data range; both are averaged over slices. Dice per class is computed per slice and
averaged over the slices where the class is present. A segmentation-only network (``seg_zero_filled``,
``seg_target``) reports the zero-filled image (and, for ``seg_target``, is given the target), so its SSIM and
PSNR are those of its input.

    .venv/bin/python benchmarks/recon_seg_eval.py --tta shipped=models/recon_seg_mni/model.ckpt \
        --checkpoint "shipped, one pass=models/recon_seg_mni/model.ckpt" --json eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from medmtl.data.build import build_mni_dataset, slice_seed
from medmtl.data.files import kspace_to_tensor
from medmtl.data.mni import SimulationOptions, split_slices
from medmtl.data.online import template_slices
from medmtl.data.simulate import SimulateMultiCoil
from medmtl.inference import Predictor
from medmtl.io.atomic import atomic_path
from medmtl.io.kspace import KSpaceFile
from medmtl.metrics.recon import psnr, ssim
from medmtl.metrics.seg import dice_hd95
from medmtl.models.cg_sense import cg_sense
from medmtl.models.data_consistency import set_proximal_steps
from medmtl.transforms.coils import rss_image

SETTINGS = {4.0: 0.08, 8.0: 0.04}
CG_ITERATIONS = (2, 3, 4, 5, 6, 8, 10, 15, 20)
CG_REGS = (0.0, 0.01, 0.03, 0.1, 0.3)
SEED = 0


def true_maps(orientation: str, indices: list[int], options: SimulationOptions) -> np.ndarray:
    """The simulator's coil maps of the given template slices, as ``medmtl data mni`` drew them (S, C, H, W)."""
    images, _ = template_slices(orientation, tuple(indices), options.size)
    simulator = SimulateMultiCoil(options.num_coils, options.noise_level)
    maps = []
    for i, index in enumerate(indices):
        simulator.set_random_state(seed=slice_seed(SEED, orientation, index))
        sens = simulator(images[i : i + 1]).sens_maps
        maps.append(np.ascontiguousarray(sens.numpy()).view(np.complex64)[..., 0])
    return np.stack(maps)


def read(path: Path) -> dict:
    """k-space (S, C, H, W) complex, mask (W,), target (S, H, W), labels (S, H, W) and the slice indices."""
    with KSpaceFile(path) as f:
        slices = [f.read_slice(i) for i in range(f.num_slices)]
        return {
            "kspace": np.stack([s["kspace"] for s in slices]),
            "mask": f.mask(),
            "target": np.stack([s["target"] for s in slices]),
            "labels": np.stack([s["segmentation"] for s in slices]),
            "indices": json.loads(f.attrs["template_slices"]),
            "orientation": f.attrs["orientation"],
        }


def checkpoint_args(doc: str, argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser and arguments of a one-checkpoint benchmark: --checkpoint, --accelerations, --threads
    (applied to torch here), --seed (of the simulated validation data)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--accelerations", type=float, nargs="+", default=sorted(SETTINGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--seed",
        type=int,
        default=SEED,
        help="of the validation data's coils and noise (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if any(a not in SETTINGS for a in args.accelerations):
        parser.error(f"--accelerations: choose from {sorted(SETTINGS)}")
    torch.set_num_threads(args.threads)
    return parser, args


def validation_data(acceleration: float, seed: int = SEED) -> dict:
    """``read`` of the axial validation slices as ``medmtl data mni`` writes them at this acceleration."""
    options = SimulationOptions(accelerations=(acceleration,), center_fractions=(SETTINGS[acceleration],))
    with tempfile.TemporaryDirectory() as tmp:
        (path,) = build_mni_dataset(
            Path(tmp), splits=("val",), options=options, seed=seed, show_progress=False
        )
        return read(path)


def metrics(recon: np.ndarray, target: np.ndarray, seg: np.ndarray | None, labels: np.ndarray) -> dict:
    r, t = torch.from_numpy(recon).double(), torch.from_numpy(target).double()
    row = {"ssim": float(ssim(r, t).mean()), "psnr": float(psnr(r, t).mean())}
    if seg is not None:
        dice, _ = dice_hd95(torch.from_numpy(seg).long(), torch.from_numpy(labels).long(), 3)
        row["dice_gm"], row["dice_wm"] = (float(np.nanmean(dice[:, k].numpy())) for k in (0, 1))
    return row


def mask_tensor(mask: np.ndarray, width: int) -> torch.Tensor:
    return torch.from_numpy((np.asarray(mask) != 0).astype(np.float32).reshape(-1, width))[
        None, None, :, :, None
    ]


def cg_sweep(data: dict, maps: np.ndarray) -> dict[tuple[int, float], np.ndarray]:
    """Magnitude of CG-SENSE at every (iterations, reg) of the grid: {(n, reg): (S, H, W)}."""
    kspace = kspace_to_tensor(data["kspace"])
    sens = kspace_to_tensor(maps)
    mask = mask_tensor(data["mask"], kspace.shape[-2])
    out = {}
    for reg in CG_REGS:
        for n in CG_ITERATIONS:
            x = cg_sense(kspace, mask, sens, iterations=n, reg=reg)
            out[(n, reg)] = torch.linalg.vector_norm(x, dim=-1).numpy()
    return out


def tune_cg(acceleration: float, root: Path) -> tuple[int, float]:
    """(iterations, reg) of the best mean PSNR on every fourth axial training slice."""
    train = list(split_slices("axial", "train"))[::4]
    options = SimulationOptions(accelerations=(acceleration,), center_fractions=(SETTINGS[acceleration],))
    spec = ",".join(f"{i}:{i + 1}" for i in train)
    (path,) = build_mni_dataset(root / "tune", slices=spec, options=options, seed=SEED, show_progress=False)
    data = read(path)
    sweep = cg_sweep(data, true_maps("axial", data["indices"], options))
    scores = {key: metrics(v, data["target"], None, data["labels"])["psnr"] for key, v in sweep.items()}
    return max(scores, key=scores.get)


def evaluate(
    checkpoints: dict[str, Path],
    accelerations: list[float],
    threads: int,
    cg: bool = True,
    cg_iterations: int | None = None,
    tta: frozenset[str] = frozenset(),
) -> list[dict]:
    """The rows of the module docstring; the checkpoints named in ``tta`` run with mirror TTA."""
    torch.set_num_threads(threads)
    predictors = {
        name: Predictor.from_checkpoint(path, batch_size=4, require_segmentation=False, tta=name in tta)
        for name, path in checkpoints.items()
    }
    if cg_iterations is not None:
        for predictor in predictors.values():
            set_proximal_steps(predictor.model, cg_iterations)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for acceleration in accelerations:
            options = SimulationOptions(
                accelerations=(acceleration,), center_fractions=(SETTINGS[acceleration],)
            )
            root = Path(tmp, f"x{acceleration:g}")
            (path,) = build_mni_dataset(
                root, splits=("val",), options=options, seed=SEED, show_progress=False
            )
            data = read(path)
            kspace = kspace_to_tensor(data["kspace"])
            mask = mask_tensor(data["mask"], kspace.shape[-2])
            base = {"acceleration": acceleration, "center_fraction": SETTINGS[acceleration]}
            zero_filled = rss_image(kspace * mask[0]).numpy()
            rows.append(
                base | {"method": "zero-filled"} | metrics(zero_filled, data["target"], None, data["labels"])
            )
            if cg:
                n, reg = tune_cg(acceleration, root)
                maps = true_maps(data["orientation"], data["indices"], options)
                x = cg_sense(kspace, mask, kspace_to_tensor(maps), iterations=n, reg=reg)
                recon = torch.linalg.vector_norm(x, dim=-1).numpy()
                name = f"CG-SENSE (true maps, {n} it, reg {reg:g})"
                rows.append(base | {"method": name} | metrics(recon, data["target"], None, data["labels"]))
            for name, predictor in predictors.items():
                if getattr(predictor.model, "mode", None) == "seg_target":
                    recon, seg = data["target"], _seg_of_target(predictor, kspace, mask, data["target"])
                else:
                    recon, seg = predictor.run(data["kspace"], data["mask"])
                rows.append(base | {"method": name} | metrics(recon, data["target"], seg, data["labels"]))
            print(table([r for r in rows if r["acceleration"] == acceleration]), flush=True)
    return rows


@torch.inference_mode()
def _seg_of_target(
    predictor: Predictor, kspace: torch.Tensor, mask: torch.Tensor, target: np.ndarray
) -> np.ndarray:
    """The upper bound: ``seg_target`` segments the fully sampled target image."""
    out = predictor.model(kspace, mask, mask, target=torch.from_numpy(target))
    return out.seg_logits.argmax(dim=1).to(torch.uint8).numpy()


def table(rows: list[dict]) -> str:
    head = "| acceleration | method | SSIM | PSNR dB | Dice GM | Dice WM |\n|---|---|---|---|---|---|"
    lines = []
    for r in rows:
        dice = [f"{r[k]:.3f}" if k in r else "-" for k in ("dice_gm", "dice_wm")]
        accel = f"{r['acceleration']:g}x ({r['center_fraction']:g})"
        lines.append(
            f"| {accel} | {r['method']} | {r['ssim']:.3f} | {r['psnr']:.2f} | {dice[0]} | {dice[1]} |"
        )
    return "\n".join([head, *lines])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        action="append",
        dest="rows",
        default=[],
        type=lambda s: (s, False),
        metavar="NAME=PATH",
    )
    parser.add_argument(
        "--tta",
        action="append",
        dest="rows",
        type=lambda s: (s, True),
        metavar="NAME=PATH",
        help="a checkpoint run with mirror test-time augmentation",
    )
    parser.add_argument("--accelerations", type=float, nargs="+", default=sorted(SETTINGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--no-cg", action="store_true", help="leave out the CG-SENSE row (its tuning is slow)"
    )
    parser.add_argument(
        "--cg-iterations", type=int, metavar="N", help="CG steps per cascade of proximal (cg) checkpoints"
    )
    args = parser.parse_args(argv)
    if any(a not in SETTINGS for a in args.accelerations):
        parser.error(f"--accelerations: choose from {sorted(SETTINGS)}")
    if args.cg_iterations is not None and args.cg_iterations < 1:
        parser.error(f"--cg-iterations: must be at least 1, got {args.cg_iterations}")
    checkpoints, tta = {}, set()
    for spec, mirrored in args.rows:
        name, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"{'--tta' if mirrored else '--checkpoint'} {spec!r}: expected NAME=PATH")
        if name in checkpoints:
            parser.error(f"two rows are named {name!r}")
        checkpoints[name] = Path(path)
        if mirrored:
            tta.add(name)
    rows = evaluate(
        checkpoints,
        args.accelerations,
        args.threads,
        cg=not args.no_cg,
        cg_iterations=args.cg_iterations,
        tta=frozenset(tta),
    )
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
