"""Samples per second of the online MNI152 simulator next to reading the same samples from HDF5.

Both sides serve the same template slices (the default axial training split unless ``--slices``), at the same
coil count and matrix size, through a DataLoader with ``--workers`` worker processes and medmtl's collation:

- online: ``SimulatedKSpaceDataset`` (augmentation, coil maps, phase, noise, mask, normalisation per sample);
- HDF5: the slices are first written by the builder (``medmtl data mni``), then read back with
  ``KSpaceSliceDataset`` and normalised (``NormalizeKSpaced``). The first epoch warms the page cache.

The clock starts when the first batch arrives, so worker start-up and the template load are left out; the
table reports the steady rate over the remaining batches.

    .venv/bin/python benchmarks/data_throughput.py --coils 8 --size 256 256 --workers 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from medmtl.data.build import build_mni_dataset
from medmtl.data.datamodule import collate_samples
from medmtl.data.files import KSpaceSliceDataset
from medmtl.data.mni import SimulationOptions, parse_slices, split_slices
from medmtl.data.online import EpochSampler, SimulatedKSpaceDataset
from medmtl.keys import Keys
from medmtl.transforms.intensity import NormalizeKSpaced


def steady_rate(loader: DataLoader, epochs: int) -> tuple[int, float]:
    """(samples timed, seconds) over ``epochs`` passes, timed from the arrival of the first batch."""
    counted, start = 0, None
    for epoch in range(epochs):
        if isinstance(loader.sampler, EpochSampler):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            if start is None:
                start = time.perf_counter()  # the first batch pays for worker start-up
                continue
            counted += batch[Keys.KSPACE].shape[0]
    return counted, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coils", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--slices", default=None, help="axial template slices (default: the training split)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write the HDF5 copy (default: a temp dir)"
    )
    args = parser.parse_args()

    options = SimulationOptions(num_coils=args.coils, size=tuple(args.size))
    indices = parse_slices(args.slices, "axial") if args.slices else split_slices("axial", "train")
    spec = ",".join(f"{i}:{i + 1}" for i in indices)
    loader_args = dict(batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_samples)

    online = SimulatedKSpaceDataset("train", slices=spec, options=options)
    online_loader = DataLoader(online, sampler=EpochSampler(len(online)), **loader_args)
    online_n, online_s = steady_rate(online_loader, args.epochs)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        start = time.perf_counter()
        (path,) = build_mni_dataset(tmp, slices=spec, options=options, show_progress=False)
        build_s = time.perf_counter() - start
        files = KSpaceSliceDataset(path, transform=NormalizeKSpaced())
        file_loader = DataLoader(files, shuffle=True, **loader_args)
        file_n, file_s = steady_rate(file_loader, args.epochs)
        size_mb = path.stat().st_size / 2**20

    print(
        f"{len(indices)} axial slices x {args.epochs} epochs, {args.coils} coils, {args.size[0]}x{args.size[1]}, "
        f"batch {args.batch_size}, {args.workers} workers, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print(f"HDF5 copy: {size_mb:.0f} MiB written in {build_s:.1f} s by the builder")
    print(f"{'source':<28}{'samples':>9}{'seconds':>10}{'samples/s':>11}")
    for name, n, s in (
        ("online simulator", online_n, online_s),
        ("HDF5 (KSpaceSliceDataset)", file_n, file_s),
    ):
        print(f"{name:<28}{n:>9}{s:>10.2f}{n / s:>11.1f}")
    print(f"HDF5 / online: {(file_n / file_s) / (online_n / online_s):.1f}x")


if __name__ == "__main__":
    main()
