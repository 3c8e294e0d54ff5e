"""``medmtl data``: build and inspect datasets."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from medmtl.cli import data_mni

    parser = sub.add_parser("data", help="build or inspect datasets", description=__doc__)
    data_sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", parser_class=type(parser))
    data_sub.required = True
    data_mni.register(data_sub)
    inspect = data_sub.add_parser(
        "inspect",
        help="summarise k-space files",
        description="Print one line per k-space HDF5 file: slices, coils, HxW, the measured acceleration "
        "(mask elements / sampled elements) and the mean SSIM of the zero-filled RSS image against "
        "`target` or `reconstruction_rss` (n/a without one). A bad file stops it with exit code 2.",
    )
    inspect.add_argument("paths", nargs="+", metavar="PATH", help="a .h5 file, or a folder of them")
    inspect.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    # Imports stay here so that `medmtl --help` does not pay for h5py and torch.
    from medmtl.io.kspace import KSpaceFile, expand_kspace_paths

    files = expand_kspace_paths(args.paths)
    # Every header is checked before the slow pass, so a bad file late in the list fails at once.
    for path in files:
        KSpaceFile(path).close()

    from medmtl.data.inspect import format_line, inspect_file

    for path in files:
        print(format_line(inspect_file(path)), flush=True)
    return 0
