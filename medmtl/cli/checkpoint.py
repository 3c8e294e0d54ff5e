"""``medmtl checkpoint slim``: a deployable copy of a training checkpoint.

A ``medmtl fit`` checkpoint also holds the optimiser's moments, the scheduler, loop and callback states, so
it is about three times the size of the weights. The slim copy keeps what inference reads (the network's
weights and the hyper-parameters that describe it) plus a record of where it came from, is checked by
loading it back with ``medmtl.inference.Predictor``, and is written atomically. It cannot resume training.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("checkpoint", help="work with checkpoints", description=__doc__)
    ckpt_sub = parser.add_subparsers(
        dest="checkpoint_command", metavar="CHECKPOINT_COMMAND", parser_class=type(parser)
    )
    ckpt_sub.required = True
    slim = ckpt_sub.add_parser(
        "slim",
        help="write a weights-only copy for inference",
        description=__doc__.split("\n\n")[1],
    )
    slim.add_argument("--checkpoint", required=True, type=Path, help="a `medmtl fit` checkpoint (.ckpt)")
    slim.add_argument("--output", required=True, type=Path, help="where to write the slim checkpoint")
    slim.set_defaults(func=run_slim)


def run_slim(args: argparse.Namespace) -> int:
    import hashlib

    import torch

    from medmtl import __version__
    from medmtl.errors import InputError
    from medmtl.inference import Predictor, _load_checkpoint
    from medmtl.io.atomic import atomic_path

    if args.output.resolve() == args.checkpoint.resolve():
        raise InputError(args.output, "is the input checkpoint; write the slim copy elsewhere")
    checkpoint = _load_checkpoint(args.checkpoint)
    Predictor.from_checkpoint(args.checkpoint, require_segmentation=False)  # the source must load as it is
    slim = {
        "state_dict": {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")},
        "hyper_parameters": checkpoint.get("hyper_parameters", {}),
        "medmtl": {
            "version": __version__,
            "source": args.checkpoint.name,
            "source_sha256": hashlib.sha256(args.checkpoint.read_bytes()).hexdigest(),
            "global_step": int(checkpoint.get("global_step", -1)),
            "epoch": int(checkpoint.get("epoch", -1)),
        },
    }
    with atomic_path(args.output) as tmp:
        torch.save(slim, tmp)
        Predictor.from_checkpoint(tmp, require_segmentation=False)
    size = args.output.stat().st_size / 2**20
    print(
        f"{args.output} ({size:.1f} MiB, {len(slim['state_dict'])} tensors, step {slim['medmtl']['global_step']})"
    )
    return 0
