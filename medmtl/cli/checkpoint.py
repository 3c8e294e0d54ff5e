"""``medmtl checkpoint slim``: a deployable copy of a training checkpoint.

A ``medmtl fit`` checkpoint also holds the optimiser's moments, the scheduler, loop and callback states, so
it is about three times the size of the weights. The slim copy keeps what inference reads (the network's
weights and the hyper-parameters that describe it) plus a record of where it came from, is checked by
loading it back with ``medmtl.inference.Predictor``, and is written atomically. It cannot resume training.

``--cg-iterations N`` lets the copy's proximal data-consistency steps (``dc: cg``) run N conjugate-gradient
steps per cascade instead of the number they were trained with; the weights are unchanged. More steps solve
each cascade's linear system more exactly, which MoDL does at test time too.

``--segment-refined`` lets the copy's last segmentation read the refined magnitude (after the refiner) instead
of the last cascade's (``ReconSegNet(segment_refined=True)``), ``--no-segment-refined`` the last cascade's; the
weights are unchanged, and so are the segmentations fed back into the cascades.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Record keys of the configuration a network was trained with, where a copy changed it.
_TRAINED_KEYS = ("cg_iterations_trained", "segment_refined_trained")


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
    slim.add_argument(
        "--cg-iterations",
        type=int,
        metavar="N",
        help="CG steps per cascade of the copy's proximal data consistency (default: as trained)",
    )
    slim.add_argument(
        "--segment-refined",
        action=argparse.BooleanOptionalAction,
        help="the copy's last segmentation reads the refined magnitude, or not (a recon+seg network with a "
        "refiner; default: as the source)",
    )
    slim.set_defaults(func=run_slim)


def run_slim(args: argparse.Namespace) -> int:
    import hashlib

    import torch

    from medmtl import __version__
    from medmtl.errors import ConfigError, InputError
    from medmtl.inference import Predictor, _load_checkpoint
    from medmtl.io.atomic import atomic_path

    if args.output.resolve() == args.checkpoint.resolve():
        raise InputError(args.output, "is the input checkpoint; write the slim copy elsewhere")
    if args.cg_iterations is not None and args.cg_iterations < 1:
        raise ConfigError("--cg-iterations", f"must be at least 1, got {args.cg_iterations}")
    checkpoint = _load_checkpoint(args.checkpoint)
    # the source must load as it is
    source = Predictor.from_checkpoint(args.checkpoint, require_segmentation=False).model
    # A slim source has no loop state of its own; its record has the training step.
    record = checkpoint.get("medmtl", {})
    slim = {
        "state_dict": {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")},
        "hyper_parameters": checkpoint.get("hyper_parameters", {}),
        "medmtl": {
            "version": __version__,
            "source": args.checkpoint.name,
            "source_sha256": hashlib.sha256(args.checkpoint.read_bytes()).hexdigest(),
            "global_step": int(checkpoint.get("global_step", record.get("global_step", -1))),
            "epoch": int(checkpoint.get("epoch", record.get("epoch", -1))),
        },
    }
    # What the copy changes of the network's configuration; the record keeps the values it was trained with
    # (those of the first copy, in a chain of copies).
    changes: dict[str, Any] = {}
    if args.cg_iterations is not None:
        changes["cg_iterations"] = args.cg_iterations
        trained = _proximal_iterations(args.checkpoint, source)
        slim["medmtl"]["cg_iterations_trained"] = trained
    if args.segment_refined is not None:
        # ReconSegNet's own condition: a refiner, and a mode that both reconstructs and segments
        tasks = set(getattr(source, "tasks", ()))
        if getattr(source, "refiner", None) is None or not {"recon", "seg"} <= tasks:
            raise InputError(
                args.checkpoint, "holds no joint or sequential network with a refiner for --segment-refined"
            )
        changes["segment_refined"] = args.segment_refined
        slim["medmtl"]["segment_refined_trained"] = bool(source.segment_refined)
    slim["medmtl"] |= {k: v for k, v in record.items() if k in _TRAINED_KEYS}
    if changes:
        slim["hyper_parameters"] = _with_init_args(args.checkpoint, slim["hyper_parameters"], changes)
    with atomic_path(args.output) as tmp:
        torch.save(slim, tmp)
        Predictor.from_checkpoint(tmp, require_segmentation=False)
    size = args.output.stat().st_size / 2**20
    print(
        f"{args.output} ({size:.1f} MiB, {len(slim['state_dict'])} tensors, step {slim['medmtl']['global_step']})"
    )
    return 0


def _proximal_iterations(path: Path, network: Any) -> int:
    """The CG steps of the network's proximal data-consistency steps (all the same in a medmtl network)."""
    from medmtl.errors import InputError
    from medmtl.models.data_consistency import proximal_steps

    steps = proximal_steps(network)
    if not steps:
        raise InputError(path, "has no proximal (dc: cg) data consistency for --cg-iterations to set")
    return max(steps)


def _with_init_args(path: Path, hparams: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` with the network's init arguments updated by ``changes``."""
    from medmtl.errors import InputError

    model = hparams.get("model")
    init_args = model.get("init_args") if isinstance(model, Mapping) else None
    if not isinstance(init_args, Mapping):
        raise InputError(path, f"records no network init_args for {', '.join(changes)} to set")
    return {**hparams, "model": {**model, "init_args": {**init_args, **changes}}}
