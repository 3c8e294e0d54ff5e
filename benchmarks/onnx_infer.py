"""Inference latency of the shipped networks: torch eager, torch ``inference_mode`` and onnxruntime, as ratios.

Two tables (``--models`` picks):

- recon+seg: the shipped model (``models/recon_seg_mni/model.ckpt``, or ``--checkpoint``) on one simulated
  MNI slice (validation split, 4x equispaced, 0.08 centre) at ``--size`` with ``--coils`` coils, batch 1;
- lesion: the shipped lesion model (``models/lesion_mni/model.ckpt``, or ``--lesion-checkpoint``) over the
  network part of one ``--lesion-volume`` volume (default 256 x 256 x 64): as many 2.5D context stacks as
  slices, in batches of ``--lesion-batch`` (``medmtl lesion``'s default 8). The inputs are seeded uniform
  values in the network's normalised range: the network's time does not depend on them (decoding does, and
  is timed by ``benchmarks/lesion_infer.py``).

Each network is exported into a temporary folder at every ``--precision`` and verified there against PyTorch
(``medmtl.export.export_onnx`` / ``medmtl.lesion_export.export_lesion_onnx``), on the default data's real
case and on the timing input; the "accuracy" column is that verification on the timing input (recon: max
relative error and segmentation argmax agreement; lesion: worst relative error of the head outputs and the
agreement of decoded detections).

``--profile`` also runs the fp32 recon+seg export ``--runs`` times in an onnxruntime session with profiling on
and prints each operator type's share of the node time (where the onnxruntime time goes).

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

import numpy as np
import torch

from medmtl.data.lesion_dataset import patient_frame
from medmtl.export import export_onnx, format_report, real_case
from medmtl.inference import Predictor, load_network
from medmtl.lesion_export import call_lesion_network, export_lesion_onnx, lesion_real_case
from medmtl.onnx_model import OnnxLesionNetwork, OnnxNetwork

MODELS = Path(__file__).resolve().parents[1] / "models"
SHIPPED = MODELS / "recon_seg_mni" / "model.ckpt"
SHIPPED_LESION = MODELS / "lesion_mni" / "model.ckpt"


def median_time(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_rows(call, args: argparse.Namespace) -> list[tuple[str, float, str]]:
    """The two PyTorch rows: ``call()`` timed under ``torch.no_grad`` (eager) and ``torch.inference_mode``."""

    def eager():
        with torch.no_grad():
            call()

    def inference():
        with torch.inference_mode():
            call()

    return [
        ("torch eager (no_grad)", median_time(eager, args.runs, args.warmup), "reference"),
        ("torch inference_mode", median_time(inference, args.runs, args.warmup), "same"),
    ]


def op_shares(path: Path, feeds: dict, threads: int, runs: int) -> str:
    """Each ONNX operator type's share of the node time over ``runs`` calls, as a table."""
    import collections
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    total: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            total[event["args"]["op_name"]] += event["dur"]
    whole = sum(total.values())
    lines = ["| operator | ms per call | share |", "|---|---|---|"]
    for name, micros in total.most_common(10):
        lines.append(f"| {name} | {micros / runs / 1e3:.1f} | {100 * micros / whole:.1f} % |")
    return "\n".join(lines)


def recon_seg(args: argparse.Namespace) -> list[tuple[str, float, str]]:
    predictor = Predictor.from_checkpoint(args.checkpoint, require_segmentation=False)
    net = predictor.model
    inputs = real_case(num_coils=args.coils, size=tuple(args.size))

    rows = torch_rows(lambda: net(*inputs), args)
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precision:
            path = Path(tmp) / f"model_{precision}.onnx"
            report = export_onnx(
                net,
                predictor.classes,
                path,
                precision=precision,
                cases={"real": real_case(), "timing": inputs},
            )
            print(format_report(report))
            onnx_net = OnnxNetwork(path, threads=args.threads)
            seconds = median_time(lambda n=onnx_net: n(*inputs), args.runs, args.warmup)
            timing = report.cases[-1]
            accuracy = (
                f"recon max rel {timing.recon_max_rel:.2g}, seg agreement {100 * timing.seg_agreement:.3f} %"
            )
            rows.append((f"onnxruntime {precision}", seconds, accuracy))
            if args.profile and precision == "fp32":
                feeds = OnnxNetwork.feeds(*inputs)
                print(f"\nonnxruntime fp32 operator shares, recon+seg, {args.runs} calls:")
                print(op_shares(path, feeds, args.threads, args.runs))
    return rows


def lesion(args: argparse.Namespace) -> list[tuple[str, float, str]]:
    net = load_network(args.lesion_checkpoint)[0].eval()
    height, width, slices = args.lesion_volume
    gen = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, slices, args.lesion_batch):
        b = min(args.lesion_batch, slices - start)
        context = torch.rand(b, net.num_slices, height, width, generator=gen)
        position = torch.linspace(start, start + b - 1, b) / max(slices - 1, 1)
        clinical = (torch.rand(b, net.num_clinical, generator=gen),) if net.num_clinical else ()
        frames = ()
        if net.reads_patient_frame:  # a 1 x 1 x 2 mm axial volume
            affine = np.diag([-1.0, -1.0, 2.0, 1.0])
            ks = range(start, start + b)
            frames = (
                torch.from_numpy(np.stack([patient_frame(affine, (height, width, slices), k) for k in ks])),
            )
        batches.append((context, position, *clinical, *frames))

    def volume(run) -> None:
        for batch in batches:
            call_lesion_network(run, batch)

    rows = torch_rows(lambda: volume(net), args)
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precision:
            path = Path(tmp) / f"lesion_{precision}.onnx"
            cases = {"real": lesion_real_case(net), "timing": batches[0]}
            report = export_lesion_onnx(net, path, precision=precision, cases=cases)
            print(format_report(report))
            onnx_net = OnnxLesionNetwork(path, threads=args.threads)
            seconds = median_time(lambda n=onnx_net: volume(n), args.runs, args.warmup)
            timing = report.cases[-1]
            worst = max(timing.output_max_rel.values())
            accuracy = f"max rel {worst:.2g}, detections agree {100 * timing.detection_agreement:.1f} %"
            rows.append((f"onnxruntime {precision}", seconds, accuracy))
    return rows


def table(title: str, rows: list[tuple[str, float, str]]) -> str:
    eager_time = rows[0][1]
    lines = [title, "", "| path | ms | speed-up vs eager | accuracy vs torch |", "|---|---|---|---|"]
    for name, seconds, accuracy in rows:
        lines.append(f"| {name} | {1e3 * seconds:.1f} | {eager_time / seconds:.2f} | {accuracy} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["recon-seg", "lesion"], choices=["recon-seg", "lesion"]
    )
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED)
    parser.add_argument("--coils", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256))
    parser.add_argument("--lesion-checkpoint", type=Path, default=SHIPPED_LESION)
    parser.add_argument(
        "--lesion-volume", type=int, nargs=3, default=(256, 256, 64), metavar=("H", "W", "SLICES")
    )
    parser.add_argument("--lesion-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "int8"])
    parser.add_argument("--profile", action="store_true", help="print onnxruntime's operator shares (fp32)")
    args = parser.parse_args()
    if args.profile and ("fp32" not in args.precision or "recon-seg" not in args.models):
        parser.error("--profile profiles the fp32 recon+seg export: keep fp32 and recon-seg selected")
    torch.set_num_threads(args.threads)

    tables = []
    if "recon-seg" in args.models:
        title = (
            f"recon+seg, {args.checkpoint.name}: B=1, {args.coils} coils, {args.size[0]}x{args.size[1]}, "
            f"{args.threads} threads, median of {args.runs}"
        )
        tables.append(table(title, recon_seg(args)))
    if "lesion" in args.models:
        h, w, k = args.lesion_volume
        title = (
            f"lesion, {args.lesion_checkpoint.name}: network over one {h}x{w}x{k} volume "
            f"(batches of {args.lesion_batch}), {args.threads} threads, median of {args.runs}"
        )
        tables.append(table(title, lesion(args)))
    print()
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
