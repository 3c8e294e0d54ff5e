"""Inference latency of a recon+seg network: torch eager, torch ``inference_mode`` and onnxruntime, as ratios.

The network is the shipped model (``models/recon_seg_mni/model.ckpt``) unless ``--checkpoint`` names another;
it is exported with ``medmtl.export.export_onnx`` (verified against PyTorch on the timing input, at every
``--precision``) into a temporary folder. The input is one simulated MNI slice (validation split, 4x
equispaced, 0.08 centre) at ``--size`` with ``--coils`` coils, batch 1.

- torch eager: ``net(...)`` under ``torch.no_grad``;
- torch inference_mode: the same under ``torch.inference_mode``;
- onnxruntime: ``OnnxNetwork`` (CPU provider, ``--threads`` intra-op threads), which includes copying the
  inputs to numpy and the outputs back.

Each time is the median of ``--runs`` calls after ``--warmup`` calls; torch uses ``--threads`` threads too.
Ratios are eager time / row time (above 1 = faster than eager), from the same run.

    .venv/bin/python benchmarks/onnx_infer.py --threads 2 --coils 8 --size 256 256
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from medmtl.export import export_onnx, format_report, real_case
from medmtl.inference import Predictor
from medmtl.onnx_model import OnnxNetwork

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "recon_seg_mni" / "model.ckpt"


def median_time(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED)
    parser.add_argument("--coils", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "int8"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    predictor = Predictor.from_checkpoint(args.checkpoint, require_segmentation=False)
    net = predictor.model
    inputs = real_case(num_coils=args.coils, size=tuple(args.size))

    def eager():
        with torch.no_grad():
            net(*inputs)

    def inference():
        with torch.inference_mode():
            net(*inputs)

    rows = [
        ("torch eager (no_grad)", median_time(eager, args.runs, args.warmup)),
        ("torch inference_mode", median_time(inference, args.runs, args.warmup)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precision:
            path = Path(tmp) / f"model_{precision}.onnx"
            report = export_onnx(
                net, predictor.classes, path, precision=precision, cases={"timing input": inputs}
            )
            print(format_report(report))
            onnx_net = OnnxNetwork(path, threads=args.threads)
            rows.append(
                (
                    f"onnxruntime {precision}",
                    median_time(lambda n=onnx_net: n(*inputs), args.runs, args.warmup),
                )
            )

    eager_time = rows[0][1]
    print(
        f"\n{args.checkpoint.name}: B=1, {args.coils} coils, {args.size[0]}x{args.size[1]}, "
        f"{args.threads} threads, median of {args.runs}"
    )
    print(f"| {'path':<24} | {'ms':>9} | {'speed-up vs eager':>17} |")
    print(f"|{'-' * 26}|{'-' * 11}|{'-' * 19}|")
    for name, seconds in rows:
        print(f"| {name:<24} | {1e3 * seconds:9.1f} | {eager_time / seconds:17.2f} |")


if __name__ == "__main__":
    main()
