"""Volume-level lesion inference time: ``LesionPredictor.predict_volume`` on one 256 x 256 x 64 volume.

The volume is a simulated MNI lesion volume (``medmtl.data.lesion_sim``, axial, 1 mm in-plane, 3 mm slices,
seeded) padded with its background to 256 x 256 and cut to the central 64 slices (``--size`` changes that).
The network is the checkpoint's (``--checkpoint``) or, without one, the default ``LesionNet`` with seeded
random weights. An untrained network scores every peak near its 0.1 prior, so at the default threshold
each slice decodes its full ``top_k`` of peaks (masks, NMS, RECIST axes): the worst case for decoding and
linking; ``--score-threshold`` shows a realistic load.

Each time is the median of ``--runs`` volumes after ``--warmup`` volumes, with ``--threads`` intra-op
threads. The split comes from timing the network's calls and ``decode_detections``' calls inside the same
runs; "other" is the rest: context sampling and normalisation, linking, the instance volume. The CPU time
of the process (all threads) is given beside the wall time: on a shared machine the wall time also counts
the time other jobs held the cores, while the CPU time divided by the threads approximates the wall time on
an idle machine (threads that spin while a descheduled peer holds them up inflate it a little).

    .venv/bin/python benchmarks/lesion_infer.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import medmtl.lesion_inference as lesion_inference
from medmtl.data.lesion_dataset import patient_frame
from medmtl.data.lesion_record import LesionVolume
from medmtl.data.lesion_sim import LesionSimOptions, simulate_lesion_volume
from medmtl.lesion_inference import LesionPredictor
from medmtl.models.lesion_net import LesionNet


def fit_to(volume: LesionVolume, size: tuple[int, int, int]) -> LesionVolume:
    """``volume`` padded with its minimum (centred) or cropped (centred) to ``size``; the affine follows."""
    image, start = volume.image, []
    for axis, n in enumerate(size):
        have = image.shape[axis]
        if have < n:
            before = (n - have) // 2
            pad = [(0, 0)] * 3
            pad[axis] = (before, n - have - before)
            image = np.pad(image, pad, constant_values=image.min())
            start.append(-before)
        else:
            first = (have - n) // 2
            image = np.take(image, range(first, first + n), axis=axis)
            start.append(first)
    shift = np.eye(4)
    shift[:3, 3] = start  # new index + start = old index
    return replace(
        volume,
        image=np.ascontiguousarray(image),
        instances=np.zeros(size, np.int32),
        affine=volume.affine @ shift,
    )


class Timed:
    """Calls ``fn`` and adds the wall and CPU seconds it took to ``total[key]`` (a (2,) array); other
    attributes are ``fn``'s."""

    def __init__(self, fn, total: dict[str, np.ndarray], key: str):
        self.fn, self.total, self.key = fn, total, key

    def __getattr__(self, name):
        return getattr(self.fn, name)

    def __call__(self, *args, **kwargs):
        start = np.array([time.perf_counter(), time.process_time()])
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.total[self.key] += np.array([time.perf_counter(), time.process_time()]) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a lesion checkpoint; default: random LesionNet")
    parser.add_argument("--size", type=int, nargs=3, default=(256, 256, 64), metavar=("I", "J", "K"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, help="slices per forward pass (default: the predictor's)")
    parser.add_argument("--score-threshold", type=float, help="default: decode_detections'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = {
        key: value
        for key, value in (("batch_size", args.batch_size), ("score_threshold", args.score_threshold))
        if value is not None
    }
    if args.checkpoint:
        predictor = LesionPredictor.from_checkpoint(args.checkpoint, **options)
        name = args.checkpoint.name
    else:
        torch.manual_seed(0)
        predictor = LesionPredictor(LesionNet(), **options)
        name = "LesionNet() default config, random weights"
    sim = LesionSimOptions(voxel_mm=1.0, slice_mm=(3.0,))
    volume = fit_to(simulate_lesion_volume(0, "val", options=sim, orientation="axial"), tuple(args.size))
    slices = volume.image.shape[2]

    with FlopCounterMode(display=False) as flops, torch.inference_mode():
        context = torch.zeros(1, predictor.network.num_slices, *volume.image.shape[:2])
        frame = torch.from_numpy(patient_frame(volume.affine, volume.image.shape, 0))[None]
        predictor.network(context, torch.zeros(1), None, frame)
    gflop_per_slice = flops.get_total_flops() / 1e9

    parts = ("volume", "forward", "decode")
    totals = {part: np.zeros(2) for part in parts}
    predictor.network = Timed(predictor.network, totals, "forward")
    decode = lesion_inference.decode_detections
    lesion_inference.decode_detections = Timed(decode, totals, "decode")
    timed_volume = Timed(predictor.predict_volume, totals, "volume")
    runs = []
    try:
        for run in range(args.warmup + args.runs):
            for part in parts:
                totals[part][:] = 0
            result = timed_volume(volume)
            if run >= args.warmup:
                runs.append(np.stack([totals[part] for part in parts]))
    finally:
        lesion_inference.decode_detections = decode

    # (part, wall or CPU), the median over runs; "other" is the volume's time outside forward and decode
    median = np.median(np.stack(runs), axis=0)
    times = dict(zip(parts, median))
    times["other"] = times["volume"] - times["forward"] - times["decode"]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n{name}: {'x'.join(map(str, volume.image.shape))} volume, batch {predictor.batch_size}, "
        f"{args.threads} threads, median of {args.runs} (load average {load} on {os.cpu_count()} CPUs); "
        f"{len(result.findings)} findings, {gflop_per_slice:.2f} GFLOP per slice forward"
    )
    wall = times["volume"][0]
    print(f"| {'':<34} | {'wall s':>7} | {'share':>5} | {'CPU s':>7} |")
    print(f"|{'-' * 36}|{'-' * 9}|{'-' * 7}|{'-' * 9}|")
    labels = {
        "volume": "predict_volume",
        "forward": "network forward",
        "decode": "decode_detections",
        "other": "context, linking, labels",
    }
    for part, label in labels.items():
        w, c = times[part]
        print(f"| {label:<34} | {w:7.2f} | {w / wall:5.0%} | {c:7.2f} |")
    print(f"| {'slices per second':<34} | {slices / wall:7.2f} | {'':>5} | {'':>7} |")


if __name__ == "__main__":
    main()
