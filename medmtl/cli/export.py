"""``medmtl export``: the network of a checkpoint to a verified ONNX file.

A recon+seg network's graph takes masked k-space (B, C, H, W, 2), the mask and its calibration region
(B, 1, H, W, 1), with B, C, H and W dynamic, and returns the reconstruction and/or the segmentation logits. A
lesion network's graph takes the 2.5D slice stack (B, S, H, W), the key slice's position (B,) and, if it was
trained with them, non-imaging inputs (B, E) and the slices' patient frames (B, 3, 3), with B, H and W
dynamic, and returns its raw head maps; detections are decoded outside the graph (``medmtl.onnx_model`` has both contracts). Every export is run by
onnxruntime against PyTorch on a seeded real input from the default data and a random one at another size;
an error above tolerance (for lesions, also any change in the decoded detections) fails the export and writes
nothing. The file is moved into place only after it verified. Its metadata holds the medmtl version, task,
class or tag names, input contract and the measured errors.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export a checkpoint's network to ONNX, verified by onnxruntime",
        description=__doc__.split("\n\n", 1)[1].replace("``", "`"),
    )
    parser.add_argument(
        "--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by `medmtl fit`"
    )
    parser.add_argument("--output", required=True, metavar="FILE.onnx", help="where to write the model")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        "--fp16", action="store_true", help="float16 weights and arithmetic (float32 inputs and outputs)"
    )
    precision.add_argument(
        "--quantize", action="store_true", help="onnxruntime's dynamic int8 quantisation of the weights"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import hashlib
    from pathlib import Path

    from medmtl.export import export_onnx, format_report
    from medmtl.inference import Predictor
    from medmtl.lesion_export import export_lesion_onnx
    from medmtl.models.lesion_net import LesionNet

    checkpoint = Path(args.checkpoint)
    # Predictor.from_checkpoint rebuilds any medmtl network safely; without the segmentation requirement
    # it takes lesion networks too.
    predictor = Predictor.from_checkpoint(checkpoint, require_segmentation=False)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    precision = "fp16" if args.fp16 else "int8" if args.quantize else "fp32"
    # models/recon_seg_mni (its CG steps unrolled into the graph) took 20 minutes on a busy 2-core CPU (2026-11-27).
    print(f"medmtl export: tracing and verifying {checkpoint.name} ({precision}); this can take many minutes")
    options = {"opset": args.opset, "precision": precision, "source": f"{checkpoint.name} sha256:{digest}"}
    if isinstance(predictor.model, LesionNet):
        report = export_lesion_onnx(predictor.model, args.output, **options)
    else:
        report = export_onnx(predictor.model, predictor.classes, args.output, **options)
    print(format_report(report))
    return 0
