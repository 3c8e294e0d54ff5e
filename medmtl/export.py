"""``export_onnx``: a trained recon+seg network to a verified ONNX file (the contract is in ``medmtl.onnx_model``),
and ``write_verified``, the steps below, which ``medmtl.lesion_export`` shares for lesion networks.

1. The network is traced by ``torch.export`` with B, C, H and W dynamic (``torch.onnx.export(dynamo=True)``);
   inside the trace ``medmtl.fft`` switches to DFT matrices built from the symbolic sizes (no FFT, no shift).
2. The file is written to a temporary folder beside the destination, with the metadata of
   ``medmtl.onnx_model``, then optionally quantised (onnxruntime's dynamic int8).
3. onnxruntime runs that file against PyTorch on a seeded real input (a validation slice of the default MNI
   data, 8 coils, 4x) and on a random one at another size, batch and coil count than the trace. Errors above
   the tolerance of the precision fail the export and leave no file behind.
4. Only then are the files moved into place: external-data files first, the model last, each by rename.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from medmtl import __version__
from medmtl.errors import InputError, MedmtlError
from medmtl.onnx_model import (
    FORMAT_VERSION,
    META_CLASSES,
    META_FORMAT,
    META_INPUTS,
    META_NORMALISATION,
    META_OUTPUTS,
    META_PRECISION,
    META_SOURCE,
    META_TASK,
    META_TASKS,
    META_VERIFICATION,
    META_VERSION,
    RECON_SEG_INPUT_DOC,
    RECON_SEG_INPUTS,
    RECON_SEG_NORMALISATION,
    TASK_RECON_SEG,
    OnnxNetwork,
    output_names,
)

Precision = Literal["fp32", "fp16", "int8"]


@dataclass(frozen=True)
class Tolerance:
    """Largest accepted differences between onnxruntime and PyTorch (float32) for one precision.

    recon_rel: max |onnx - torch| / max |torch| of the reconstruction.
    seg_agreement: least fraction of pixels whose segmentation argmax agrees.
    """

    recon_rel: float
    seg_agreement: float


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(recon_rel=1e-4, seg_agreement=0.999),
    # Half precision and int8 change the numbers on purpose; these bounds only catch a broken graph, and
    # the measured errors go into the metadata and the report for the user to judge.
    "fp16": Tolerance(recon_rel=2e-2, seg_agreement=0.98),
    "int8": Tolerance(recon_rel=1e-1, seg_agreement=0.9),
}


class ExportError(MedmtlError):
    """An export that failed or did not verify."""


@dataclass(frozen=True)
class CaseErrors:
    """How far onnxruntime is from PyTorch on one input."""

    name: str
    shape: tuple[int, ...]
    recon_max_abs: float | None
    recon_max_rel: float | None
    seg_logits_max_abs: float | None
    seg_agreement: float | None

    def summary(self) -> str:
        """The errors in one line of ``format_report``."""
        parts = []
        if self.recon_max_rel is not None:
            parts.append(f"recon max abs {self.recon_max_abs:.3g} rel {self.recon_max_rel:.3g}")
        if self.seg_agreement is not None:
            parts.append(
                f"logits max abs {self.seg_logits_max_abs:.3g} argmax agreement {100 * self.seg_agreement:.4f} %"
            )
        return "  ".join(parts)


@dataclass(frozen=True)
class ExportReport:
    """An export that verified: where it is, its precision and opset, the errors of each verification case
    (``CaseErrors`` or ``medmtl.lesion_export.LesionCaseErrors``) and the model file's size."""

    path: Path
    precision: str
    opset: int | None
    cases: tuple[Any, ...]
    size_bytes: int


class ReconSegGraph(nn.Module):
    """The exported part of a recon+seg network: (kspace, mask, acs_mask) -> its task outputs.

    ``half`` runs a float16 copy of the network between float32 inputs and outputs (the file's weights
    halve); ``net`` itself is left as it is.
    """

    def __init__(self, net: nn.Module, half: bool = False):
        super().__init__()
        tasks = tuple(getattr(net, "tasks", ()))
        if getattr(net, "mode", None) == "seg_target":
            raise ExportError(
                "mode 'seg_target' segments the fully sampled target, which inference never has"
            )
        if not tasks or not set(tasks) <= {"recon", "seg"}:
            raise ExportError(f"{type(net).__name__} is not a recon+seg network (tasks {list(tasks)})")
        self.net = copy.deepcopy(net).half() if half else net
        self.half = half
        self.tasks = tasks

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor, acs_mask: torch.Tensor):
        """kspace (B, C, H, W, 2), mask and acs_mask (B, 1, H, W, 1) -> reconstruction (B, H, W) and/or
        segmentation logits (B, K, H, W), float32."""
        if self.half:
            kspace, mask, acs_mask = kspace.half(), mask.half(), acs_mask.half()
        out = self.net(kspace, mask, acs_mask)
        outputs = []
        if "recon" in self.tasks:
            outputs.append(out.recon.float())
        if "seg" in self.tasks:
            outputs.append(out.seg_logits.float())
        return tuple(outputs)


def _trace_inputs() -> tuple[torch.Tensor, ...]:
    """Small inputs for the trace, each dynamic size >= 2 (torch.export specialises sizes of 1)."""
    gen = torch.Generator().manual_seed(0)
    b, c, h, w = 2, 3, 40, 36
    mask = torch.zeros(b, 1, h, w, 1)
    mask[..., ::3, :] = 1
    acs = torch.zeros_like(mask)
    acs[..., w // 2 - 3 : w // 2 + 3, :] = 1
    mask = torch.maximum(mask, acs)
    return torch.randn(b, c, h, w, 2, generator=gen) * mask, mask, acs


def real_case(
    num_coils: int = 8, index: int = 0, seed: int = 0, size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, ...]:
    """A seeded validation slice of the default MNI data (4x equispaced, 0.08 centre) as graph inputs, at
    the template's matrix or padded/cropped to ``size``."""
    from medmtl.data.mni import SimulationOptions
    from medmtl.data.online import SimulatedKSpaceDataset
    from medmtl.keys import Keys
    from medmtl.transforms.acs import acs_mask_from_mask

    options = SimulationOptions(num_coils=num_coils, size=size)
    dataset = SimulatedKSpaceDataset(split="val", options=options, seed=seed)
    sample = dataset[index]
    kspace, mask = sample[Keys.KSPACE][None], sample[Keys.MASK]
    h = kspace.shape[2]
    rows = [m[None].expand(1, 1, h, -1, 1).contiguous() for m in (mask, acs_mask_from_mask(mask))]
    return kspace, *rows


def random_case(
    batch: int = 3, coils: int = 5, height: int = 37, width: int = 29, seed: int = 1
) -> tuple[torch.Tensor, ...]:
    """A seeded random input at another batch, coil count and odd size than the trace."""
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(1, 1, 1, width, 1, generator=gen) < 0.35).float()
    acs = torch.zeros_like(mask)
    acs[..., width // 2 - 2 : width // 2 + 3, :] = 1
    mask = torch.maximum(mask, acs).expand(batch, 1, height, width, 1).contiguous()
    acs = acs.expand_as(mask).contiguous()
    return torch.randn(batch, coils, height, width, 2, generator=gen) * mask, mask, acs


def compare(net: nn.Module, onnx_net: OnnxNetwork, name: str, inputs) -> CaseErrors:
    """Run the PyTorch network and the ONNX file on ``inputs``; the PyTorch one is the reference."""
    with torch.inference_mode():
        out = net(*inputs)
    got = onnx_net(*inputs)
    recon_abs = recon_rel = logits_abs = agreement = None
    if got.recon is not None:
        diff = (got.recon - out.recon).abs().max().item()
        recon_abs, recon_rel = diff, diff / max(out.recon.abs().max().item(), 1e-30)
    if got.seg_logits is not None:
        logits_abs = (got.seg_logits - out.seg_logits).abs().max().item()
        agreement = (got.seg_logits.argmax(1) == out.seg_logits.argmax(1)).double().mean().item()
    return CaseErrors(name, tuple(inputs[0].shape), recon_abs, recon_rel, logits_abs, agreement)


def _failures(case: CaseErrors, tol: Tolerance) -> list[str]:
    failures = []
    if case.recon_max_rel is not None and not case.recon_max_rel <= tol.recon_rel:
        failures.append(f"reconstruction max relative error {case.recon_max_rel:.3g} > {tol.recon_rel:g}")
    if case.seg_agreement is not None and not case.seg_agreement >= tol.seg_agreement:
        failures.append(f"segmentation agreement {case.seg_agreement:.5f} < {tol.seg_agreement:g}")
    return [f"{case.name} input {case.shape}: {f}" for f in failures]


def _metadata(graph: ReconSegGraph, classes, precision: str, source: str) -> dict[str, str]:
    return {
        META_FORMAT: FORMAT_VERSION,
        META_VERSION: __version__,
        META_TASK: TASK_RECON_SEG,
        META_TASKS: json.dumps(list(graph.tasks)),
        META_CLASSES: json.dumps(list(classes)),
        META_INPUTS: json.dumps(RECON_SEG_INPUT_DOC),
        META_OUTPUTS: json.dumps(output_names(graph.tasks)),
        META_NORMALISATION: RECON_SEG_NORMALISATION,
        META_PRECISION: precision,
        META_SOURCE: source,
    }


def _set_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, os.fspath(path))


def _quantize(path: Path) -> None:
    """Dynamic int8 quantisation of the model at ``path``, in place.

    onnxruntime's quantiser only quantises a Conv whose weight is an initializer. Complex convolutions on the
    CPU build their real weights in the graph (the Gauss trick's sums, ``medmtl.nn.complex.conv``), so the
    model first goes through onnxruntime's recommended pre-processing, whose graph optimisation folds such
    constant subgraphs into initializers.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = path.with_name(f"pre_{path.name}")
    quantized = path.with_name(f"int8_{path.name}")
    try:
        # Symbolic shape inference is skipped: the sizes are dynamic and ONNX's own inference suffices.
        quant_pre_process(os.fspath(path), os.fspath(prepared), skip_symbolic_shape=True)
        quantize_dynamic(os.fspath(prepared), os.fspath(quantized), weight_type=QuantType.QInt8)
    except Exception as err:  # onnxruntime's quantiser raises plain ValueErrors, among others
        detail = " ".join(str(err).split())[:300]
        raise ExportError(f"int8 quantisation failed: {type(err).__name__}: {detail}") from err
    finally:
        prepared.unlink(missing_ok=True)
    os.replace(quantized, path)


@dataclass(frozen=True)
class GraphSpec:
    """What ``write_verified`` traces: a module whose forward takes and returns float32 tensors, example
    inputs (each dynamic size >= 2: torch.export specialises sizes of 1), their dynamic axes, the graph's
    input and output names, and the file's metadata (``medmtl.onnx_model``'s ``META_*``)."""

    graph: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    dynamic_axes: tuple[tuple[int, ...], ...]
    input_names: list[str]
    output_names: list[str]
    metadata: dict[str, str]


def write_verified(
    spec: GraphSpec,
    output: str | os.PathLike,
    opset: int | None,
    precision: str,
    verify: Callable[[Path], tuple[tuple[Any, ...], list[str]]],
    name: str,
) -> ExportReport:
    """Steps 1, 2 and 4 of the module docstring around ``verify`` (step 3).

    ``verify(staged_path)`` returns the per-case errors (dataclasses) and the failures, one line each; any
    failure raises ``ExportError`` and nothing is written. ``name`` names the network in messages.
    """
    if precision not in TOLERANCES:
        raise InputError("precision", f"{precision!r}; choose from {', '.join(TOLERANCES)}")
    output = Path(output)
    if output.suffix != ".onnx":
        raise InputError(output, "the output name must end in .onnx")
    auto = torch.export.Dim.AUTO
    dynamic = tuple({axis: auto for axis in axes} for axes in spec.dynamic_axes)
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        staged = workdir / output.name
        try:
            program = torch.onnx.export(
                spec.graph,
                spec.example_inputs,
                dynamo=True,
                dynamic_shapes=dynamic,
                input_names=spec.input_names,
                output_names=spec.output_names,
                opset_version=opset,
                verbose=False,
            )
            program.save(staged)
        except (torch.onnx.OnnxExporterError, RuntimeError) as err:
            detail = " ".join(str(err).split())[:300]
            raise ExportError(f"cannot export {name}: {detail}") from err
        if precision == "int8":
            _quantize(staged)
        _set_metadata(staged, spec.metadata)
        results, failures = verify(staged)
        if failures:
            raise ExportError(f"{output}: onnxruntime does not match PyTorch: {'; '.join(failures)}")
        _set_metadata(staged, {**spec.metadata, META_VERIFICATION: json.dumps([asdict(c) for c in results])})
        for extra in sorted(p for p in workdir.iterdir() if p != staged):  # external data, if any
            os.replace(extra, output.parent / extra.name)
        os.chmod(staged, 0o644)
        os.replace(staged, output)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return ExportReport(output, precision, opset, tuple(results), output.stat().st_size)


def export_onnx(
    net: nn.Module,
    classes: tuple[str, ...],
    output: str | os.PathLike,
    opset: int | None = None,
    precision: Precision = "fp32",
    source: str = "",
    cases: dict[str, tuple[torch.Tensor, ...]] | None = None,
) -> ExportReport:
    """Export ``net`` (a ``ReconSegNet`` in eval mode) to ``output``, verify it, and move it into place.

    ``cases`` replaces the default verification inputs ({"real": real_case(), "random": random_case()}).
    Raises ``ExportError`` when tracing fails or an error is above ``TOLERANCES[precision]``; nothing is
    written then. (``medmtl.lesion_export.export_lesion_onnx`` is the same for a ``LesionNet``.)
    """
    graph = ReconSegGraph(net.eval(), half=precision == "fp16").eval()
    spec = GraphSpec(
        graph,
        _trace_inputs(),
        ((0, 1, 2, 3), (0, 2, 3), (0, 2, 3)),
        list(RECON_SEG_INPUTS),
        output_names(graph.tasks),
        _metadata(graph, classes, precision, source),
    )

    def verify(path: Path) -> tuple[tuple[CaseErrors, ...], list[str]]:
        onnx_net = OnnxNetwork(path)
        chosen = cases if cases is not None else {"real": real_case(), "random": random_case()}
        results = tuple(compare(net, onnx_net, name, inputs) for name, inputs in chosen.items())
        return results, [f for case in results for f in _failures(case, TOLERANCES[precision])]

    return write_verified(spec, output, opset, precision, verify, type(net).__name__)


def format_report(report: ExportReport) -> str:
    """The verification table of an export, one line per case."""
    lines = [f"{report.path} ({report.precision}, {report.size_bytes / 2**20:.1f} MiB)"]
    lines += [f"  {c.name:<7} {'x'.join(map(str, c.shape)):<16}  {c.summary()}" for c in report.cases]
    return "\n".join(lines)


__all__ = [
    "TOLERANCES",
    "CaseErrors",
    "ExportError",
    "ExportReport",
    "GraphSpec",
    "ReconSegGraph",
    "export_onnx",
    "format_report",
    "random_case",
    "real_case",
    "write_verified",
]
