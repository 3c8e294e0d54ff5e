"""``medmtl data mni``: simulate the default multi-coil dataset from the MNI152 template (no download).

Without ``--slices`` it writes ``OUT/train/mni_<orientation>.h5`` and ``OUT/val/mni_<orientation>.h5`` from the
default, disjoint slice ranges (``--split`` picks one of them); with ``--slices`` it writes
``OUT/mni_<orientation>.h5`` of exactly those slices. The same ``--seed`` gives the same files.
"""

from __future__ import annotations

import argparse

# mni imports only numpy, so `medmtl --help` stays fast.
from medmtl.data.mni import ORIENTATIONS, SimulationOptions


def register(sub: argparse._SubParsersAction) -> None:
    # A dataclass's class attributes are its field defaults; reading them does not run the validation,
    # which imports the mask module.
    defaults = SimulationOptions
    parser = sub.add_parser(
        "mni",
        help="simulate the default k-space dataset from the MNI152 template",
        description=__doc__.split("\n\n", 1)[1].replace("``", "`"),
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument(
        "--orientation",
        nargs="+",
        choices=ORIENTATIONS,
        default=["axial"],
        help="template orientation(s), one file each (default: axial)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--slices",
        metavar="START:STOP[,...]",
        help="template slice range(s) to write into one file per orientation (default: the train/val split)",
    )
    where.add_argument(
        "--split",
        choices=("train", "val", "both"),
        default="both",
        help="which default slice range to write (default: both)",
    )
    parser.add_argument(
        "--coils", type=int, default=defaults.num_coils, help="receive coils (default: %(default)s)"
    )
    parser.add_argument(
        "--acceleration",
        type=float,
        nargs="+",
        default=list(defaults.accelerations),
        help="requested acceleration(s); one is drawn per file, paired with --center-fraction (default: %(default)s)",
    )
    parser.add_argument(
        "--center-fraction",
        type=float,
        nargs="+",
        default=None,
        help=f"fully sampled centre fraction(s), one per acceleration (default: {defaults.center_fractions[0]} each)",
    )
    parser.add_argument(
        "--mask",
        default=defaults.mask,
        help="undersampling pattern: equispaced, random, gaussian1d (1D) or gaussian2d, poisson2d (2D) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=defaults.noise_level,
        help="k-space noise std relative to the signal RMS (default: %(default)s)",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="pad/crop the slices to H x W before simulation (default: the template's matrix)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medmtl.data.build import SPLITS, build_mni_dataset

    fractions = args.center_fraction or [SimulationOptions.center_fractions[0]] * len(args.acceleration)
    options = SimulationOptions(
        num_coils=args.coils,
        noise_level=args.noise,
        accelerations=tuple(args.acceleration),
        center_fractions=tuple(fractions),
        mask=args.mask,
        size=tuple(args.size) if args.size else None,
    )
    files = build_mni_dataset(
        args.out,
        orientations=args.orientation,
        slices=args.slices,
        splits=SPLITS if args.split == "both" else (args.split,),
        options=options,
        seed=args.seed,
    )
    for path in files:
        print(path)
    return 0
