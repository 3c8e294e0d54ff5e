"""``medmtl recon-seg``: reconstruct and segment k-space files with a trained checkpoint or its ONNX export.

For every input file it writes ``OUTPUT/<name>.h5`` with ``reconstruction`` (S, H, W) float32 in the
intensity units of the input's coil-combined image, ``segmentation`` (S, H, W) uint8 and the attribute
``classes`` (DESIGN.md, "File formats"). Each file's stored mask is used (or the mask its zero columns
imply); the calibration region is estimated from it. ``--png`` adds ``OUTPUT/<name>_slice<NNN>.png`` per
slice. Inputs are opened read-only and every input is checked before the first output is written.

By default each batch is also run mirrored along H and along W, and the softmaxes and magnitudes are averaged
(mirror test-time augmentation, as nnU-Net does): three forward passes. ``--no-tta`` runs one.
"""

from __future__ import annotations

import argparse

DEFAULT_BATCH_SIZE = 1


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "recon-seg",
        help="reconstruct and segment k-space files with a checkpoint",
        description=__doc__.split("\n\n", 1)[1].replace("``", "`"),
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="CKPT", help="a checkpoint written by `medmtl fit`")
    model.add_argument(
        "--onnx", metavar="MODEL.onnx", help="a model written by `medmtl export` (onnxruntime, CPU)"
    )
    parser.add_argument(
        "--input", required=True, nargs="+", metavar="DIR_OR_FILE", help="k-space .h5 file(s) or folder(s)"
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--png", action="store_true", help="also write a PNG panel per slice")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="slices per forward pass (default: %(default)s)",
    )
    parser.add_argument(
        "--device", default="auto", help="torch device, e.g. cpu or cuda:0; auto takes a GPU if there is one"
    )
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mirror test-time augmentation: average over the input and its mirrors along H and W "
        "(3 forward passes; default: on)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Heavy imports here, so `medmtl --help` does not pay for torch.
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from medmtl.errors import InputError
    from medmtl.inference import Predictor, write_predictions
    from medmtl.io.kspace import KSpaceFile, expand_kspace_paths, validate_kspace_file

    if args.batch_size < 1:
        raise InputError("--batch-size", f"must be at least 1, got {args.batch_size}")
    if args.onnx:
        if args.device not in ("auto", "cpu"):
            raise InputError("--device", f"{args.device!r}: an ONNX model runs on the CPU here")
        predictor = Predictor.from_onnx(args.onnx, batch_size=args.batch_size, tta=args.tta)
    else:
        device = _device(args.device)
        predictor = Predictor.from_checkpoint(
            args.checkpoint, device=device, batch_size=args.batch_size, tta=args.tta
        )

    files = expand_kspace_paths(args.input)
    output = Path(args.output)
    targets: dict[Path, Path] = {}
    total = 0
    for path in files:
        # Every slice is read once up front, so a bad file anywhere fails before any output exists.
        validate_kspace_file(path)
        with KSpaceFile(path) as f:
            total += f.num_slices
        dest = output / f"{path.stem}.h5"
        if dest in targets.values():
            raise InputError(path, f"has the same name as another input, so both would write {dest}")
        if dest.exists() and dest.resolve() in {p.resolve() for p in files}:
            raise InputError(
                path, f"would be overwritten by its own predictions; choose another --output than {output}"
            )
        targets[path] = dest

    with tqdm(total=total, unit="slice", desc="recon-seg", disable=None) as bar:
        for path, dest in targets.items():
            bar.set_postfix_str(path.name)
            with KSpaceFile(path) as f:
                slices = [f.read_slice(i) for i in range(f.num_slices)]
                mask = f.mask()
            kspace = np.stack([s["kspace"] for s in slices])
            try:
                recon, seg = predictor.predict_volume(kspace, mask, progress=bar.update)
            except InputError as err:
                raise InputError(path, err.what) from err
            write_predictions(dest, recon, seg, predictor.classes, attrs={"source": path.name})
            if args.png:
                _write_panels(output, path, kspace * mask[None, None], recon, seg, slices, predictor.classes)
    print(f"medmtl recon-seg: {len(targets)} file(s), {total} slice(s) -> {output}")
    return 0


def _write_panels(output, path, masked_kspace, recon, seg, slices, classes) -> None:
    """One panel per slice; the file's target and segmentation are shown where they match the image size."""
    from medmtl.data.files import kspace_to_tensor
    from medmtl.lightning.panels import save_panel
    from medmtl.transforms.coils import rss_image

    zero_filled = rss_image(kspace_to_tensor(masked_kspace)).numpy()
    for i, sample in enumerate(slices):
        target, truth = sample.get("target"), sample.get("segmentation")
        save_panel(
            output / f"{path.stem}_slice{i:03d}.png",
            zero_filled=zero_filled[i],
            recon=recon[i],
            seg=seg[i],
            target=target if target is not None and target.shape == recon[i].shape else None,
            seg_target=truth if truth is not None and truth.shape == seg[i].shape else None,
            class_names=classes,
            title=f"{path.name} slice {i}",
        )


def _device(name: str):
    import torch

    from medmtl.errors import InputError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InputError("--device", f"{name!r} is not a torch device") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", f"{name!r} asked for, but this machine has no usable CUDA GPU")
    return device
