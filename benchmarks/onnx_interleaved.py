"""Interleaved latency of a recon+seg checkpoint in eager PyTorch and of ONNX files of it in onnxruntime.

Timings on this shared 2-core machine drift by 20 % from one minute to the next, so ``onnx_infer.py``'s
one-path-after-another medians can order two close paths either way. Here every round times each path once, in
turn, on the same input (B=1, ``--coils``, ``--size`` square, a seeded line mask), after one warm-up call each;
the table gives each path's median and its speed-up over eager. Pass an older export beside a new one to
measure what a change to the exported graph gained (``git show REV:models/recon_seg_mni/model.onnx > old.onnx``).

    .venv/bin/python benchmarks/onnx_interleaved.py --checkpoint models/recon_seg_mni/model.ckpt \\
        --onnx models/recon_seg_mni/model.onnx old.onnx --rounds 7
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from medmtl.export import random_case
from medmtl.inference import Predictor


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--onnx", type=Path, nargs="+", required=True)
    parser.add_argument("--coils", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = Predictor.from_checkpoint(args.checkpoint).model.eval()
    kspace, mask, acs = random_case(1, args.coils, args.size, args.size, seed=3)
    feeds = {"kspace": kspace.numpy(), "mask": mask.numpy(), "acs_mask": acs.numpy()}

    def eager() -> None:
        with torch.no_grad():
            net(kspace, mask, acs)

    paths = {"torch eager (no_grad)": eager}
    for path in args.onnx:
        paths[f"onnxruntime {path}"] = partial(session(path, args.threads).run, None, feeds)
    for run in paths.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, run in paths.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    eager_ms = 1000 * float(np.median(times["torch eager (no_grad)"]))
    print(
        f"{args.checkpoint}: B=1, {args.coils} coils, {args.size}x{args.size}, {args.threads} threads, "
        f"median of {args.rounds} interleaved rounds\n"
    )
    print("| path | ms | speed-up vs eager |\n|---|---|---|")
    for name, values in times.items():
        ms = 1000 * float(np.median(values))
        print(f"| {name} | {ms:.1f} | {eager_ms / ms:.2f} |")


if __name__ == "__main__":
    main()
