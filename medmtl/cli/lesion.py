"""``medmtl lesion``: find lesions in NIfTI volumes or DICOM series with a trained lesion model.

For every input volume ``<name>.nii.gz`` (or ``.nii``; a folder means the NIfTI files directly in it, or,
when it holds none, the DICOM image series in it and its subfolders, named after the folder) it writes to
OUTPUT:

- ``<name>_findings.json``: the findings, by descending score (DESIGN.md, "Lesion findings"): voxel box in
  the array axes as nibabel loads them (k = slice axis), box in patient mm, score, tag probabilities, RECIST
  long and short axis in mm, key slice;
- ``<name>_instances.nii.gz``: int32 labels with the input's affine and header, label n = finding n;
- ``<name>_finding<n>.png`` for each finding n (not with --no-png): its key slice with box, mask and tags.

Slices are linked into 3D findings when their boxes overlap on adjacent slices. A network that reads age
and sex takes them from DICOM headers, or from --age and --sex (NIfTI holds neither; they override DICOM).
Inputs are read-only; every input is read and checked before the first output is written.
"""

from __future__ import annotations

import argparse

# Kept in step with medmtl.lesion_inference.DEFAULT_BATCH_SIZE and decode_detections' score_threshold (a
# test checks): importing them here would make `medmtl --help` load torch.
_DEFAULTS_SHOWN = {"batch_size": 8, "score_threshold": 0.1}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "lesion",
        help="find, tag and measure lesions in NIfTI volumes or DICOM series",
        description=__doc__.split("\n\n", 1)[1].replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="CKPT", help="a lesion checkpoint written by `medmtl fit`")
    model.add_argument("--onnx", metavar="MODEL.onnx", help="an exported lesion model")
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="VOLUME_OR_DIR",
        help="NIfTI volume(s), folder(s) of NIfTI files, or DICOM series folder(s)",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument(
        "--batch-size",
        type=int,
        help=f"slices per forward pass (default: {_DEFAULTS_SHOWN['batch_size']})",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        metavar="P",
        help=f"least detection score kept, in [0, 1] (default: {_DEFAULTS_SHOWN['score_threshold']}, every "
        "candidate; `medmtl validate` logs val/score_at_1fp, the score at 1 false positive per slice)",
    )
    parser.add_argument("--no-png", action="store_true", help="do not write a PNG per finding")
    parser.add_argument("--age", type=float, metavar="YEARS", help="patient age, for networks that read it")
    parser.add_argument("--sex", choices=("F", "M"), help="patient sex, for networks that read it")
    parser.add_argument(
        "--device", default="auto", help="torch device, e.g. cpu or cuda:0; auto takes a GPU if there is one"
    )
    parser.set_defaults(func=run)


def volume_paths(inputs: list[str]):
    """The volumes named by ``inputs``: NIfTI files, folders whose NIfTI files are taken (sorted), or folders
    without NIfTI files that hold a DICOM series (the folder itself stands for it), each once. Raises
    ``InputError`` for a missing path, a file that is not NIfTI, or a folder with neither."""
    from pathlib import Path

    from medmtl.data.lesion_nifti import SUFFIXES
    from medmtl.errors import InputError
    from medmtl.io.dicom import is_dicom_folder

    def is_nifti(path: Path) -> bool:
        return path.name.endswith(SUFFIXES) and not path.name.startswith(".")

    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and is_nifti(p))
            if found:
                paths += found
            elif is_dicom_folder(item):
                paths.append(item)
            else:
                raise InputError(item, "holds no .nii or .nii.gz files and no DICOM series")
        elif item.is_file():
            if not is_nifti(item):
                raise InputError(
                    item, "is not a NIfTI file (expected .nii or .nii.gz; give a DICOM series as its folder)"
                )
            paths.append(item)
        else:
            raise InputError(item, "no such file or folder")
    unique = {p.resolve(): p for p in paths}
    return list(unique.values())


def read_volume(path):
    """The ``LesionVolume`` of a NIfTI file or a DICOM series folder.

    NIfTI: ``read_lesion_nifti(path)`` with nibabel's header warnings held back: they go to stderr on their
    own line ("pixdim[1,2,3] should be non-zero; setting 0 dims to 1"), and the reader's own checks refuse
    what they warn about with one ``InputError``. DICOM: ``read_dicom_series(path)``, named after the folder,
    with the patient's age and sex from the headers where they hold them."""
    import logging
    import warnings

    import numpy as np

    from medmtl.data.lesion_nifti import read_lesion_nifti
    from medmtl.data.lesion_record import LesionVolume
    from medmtl.io.dicom import read_dicom_series

    if path.is_dir():
        with warnings.catch_warnings():
            # pydicom warns about each invalid value it meets; the reader refuses what matters in one line.
            warnings.simplefilter("ignore", UserWarning)
            series = read_dicom_series(path)
        return LesionVolume(
            image=series.image,
            spacing=series.spacing,
            affine=series.affine,
            instances=np.zeros(series.image.shape, np.int32),
            lesions=(),
            tag_names=(),
            name=path.resolve().name,
            # Sex "O" (other) is no input a network was trained on: left unknown, so a network that reads
            # sex asks for --sex instead of refusing the header's value.
            meta={k: v for k, v in series.meta.items() if not (k == "sex" and v not in ("F", "M"))},
        )
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return read_lesion_nifti(path)
    finally:
        logger.setLevel(level)


def run(args: argparse.Namespace) -> int:
    # Heavy imports here, so `medmtl --help` does not pay for torch.
    from dataclasses import replace
    from pathlib import Path

    from tqdm import tqdm

    from medmtl.cli.recon_seg import _device
    from medmtl.data.lesion_dataset import intensity_range
    from medmtl.errors import InputError
    from medmtl.io.lesion_outputs import save_finding_png, write_findings_json, write_instance_nifti
    from medmtl.lesion_inference import LesionPredictor

    options = {"device": _device(args.device)}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if args.score_threshold is not None:
        options["score_threshold"] = args.score_threshold
    try:
        predictor = LesionPredictor.load(args.onnx or args.checkpoint, **options)
    except InputError as err:
        if err.where in options:  # a bad option, not a bad file
            raise InputError(f"--{err.where.replace('_', '-')}", err.what) from err
        raise
    clinical = {key: value for key, value in (("age", args.age), ("sex", args.sex)) if value is not None}

    paths = volume_paths(args.input)
    output = Path(args.output)
    inputs = {p.resolve() for p in paths}
    names: dict[str, Path] = {}
    total = 0
    volume = None
    for path in paths:
        # Every volume is read once up front, so a bad file anywhere fails before any output exists.
        volume = read_volume(path)
        if volume.name in names:
            raise InputError(
                path, f"has the same name as {names[volume.name]}, so both would write {volume.name}_*"
            )
        if path.is_dir() and output.resolve().is_relative_to(path.resolve()):
            # Outputs inside a DICOM folder would be read as its NIfTI volumes the next time.
            raise InputError(
                path,
                f"is a DICOM input folder and --output {output} lies inside it; choose an --output outside it",
            )
        if (output / f"{volume.name}_instances.nii.gz").resolve() in inputs:
            raise InputError(
                path, f"its outputs would overwrite an input; choose another --output than {output}"
            )
        names[volume.name] = path
        total += volume.image.shape[2]

    found = 0
    with tqdm(total=total, unit="slice", desc="lesion", disable=None) as bar:
        # The last volume checked is still in memory: run it first instead of reading it again (for a single
        # input, the only read).
        order = [volume.name, *(n for n in names if n != volume.name)]
        for name in order:
            path = names[name]
            bar.set_postfix_str(path.name)
            if volume is None or volume.name != name:
                volume = read_volume(path)
            volume = replace(volume, meta={**volume.meta, **clinical})
            try:
                result = predictor.predict_volume(volume, progress=bar.update)
            except InputError as err:
                raise InputError(path, err.what) from err
            write_findings_json(output / f"{name}_findings.json", result)
            instances = output / f"{name}_instances.nii.gz"
            if path.is_dir():  # a DICOM series: its geometry, no NIfTI header to copy
                write_instance_nifti(instances, result.instances, affine=volume.affine)
            else:
                write_instance_nifti(instances, result.instances, path)
            if not args.no_png:
                display = intensity_range(volume.image, predictor.window)
                for number, finding in enumerate(result.findings, 1):
                    save_finding_png(
                        output / f"{name}_finding{number}.png",
                        volume.image,
                        finding,
                        number,
                        display,
                        title=path.name,
                    )
            found += len(result.findings)
    print(f"medmtl lesion: {len(names)} volume(s), {total} slice(s), {found} finding(s) -> {output}")
    return 0
