"""Fuzzing checkpoint loading (``Predictor.from_checkpoint``): damaged bytes of a valid checkpoint, and valid
``torch.save`` files whose content is wrong: other top-level objects, missing or odd hyper-parameters,
classes outside medmtl, constructor arguments of the wrong type or absurd size, and state dicts with
missing, extra, reshaped, retyped, NaN, non-tensor or huge (stride-0, a few bytes on disk) tensors.
Only ``MedmtlError`` may come out, within the time and memory bounds of ``fuzz_support``.
"""

from __future__ import annotations

import io
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from fuzz_support import fuzz_examples, fuzz_settings, memory_bound, mutations, read_or_typed_error
from hypothesis import given
from hypothesis import strategies as st

from medmtl.errors import InputError
from medmtl.inference import Predictor
from medmtl.models.recon_seg import ReconSegNet

CLASS_PATH = "medmtl.models.recon_seg.ReconSegNet"
# The smallest networks that load: segmentation only, and joint reconstruction + segmentation.
SEG_ONLY = {"mode": "seg_zero_filled", "seg_chans": 2, "seg_pools": 1, "num_classes": 2}
JOINT = {"num_cascades": 1, "chans": 2, "pools": 1, "sens_chans": 2, "sens_pools": 1, "seg_chans": 2,
         "seg_pools": 1, "num_classes": 2}  # fmt: skip
CLASSES = ["background", "lesion"]


# Hypothesis warns when it prints a damaged file's bytes.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


@pytest.fixture
def examples(request) -> int:
    return fuzz_examples(request)


@cache
def reference_state(config: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return ReconSegNet(**{"seg": SEG_ONLY, "joint": JOINT}[config]).state_dict()


def checkpoint_object(
    init_args: Any, state: Any, classes: Any = CLASSES, class_path: Any = CLASS_PATH
) -> dict:
    """Shaped like what ``medmtl fit`` writes: LightningCLI's config in ``hyper_parameters``."""
    return {
        # A non-string key (the "int_key" edit) stays as it is.
        "state_dict": {f"model.{k}" if isinstance(k, str) else k: v for k, v in state.items()}
        if isinstance(state, dict)
        else state,
        "hyper_parameters": {
            "model": {"class_path": class_path, "init_args": init_args},
            "class_names": classes,
        },
    }


def saved(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _load(path: Path) -> Predictor:
    predictor = Predictor.from_checkpoint(path)
    assert isinstance(predictor.model, torch.nn.Module) and predictor.classes
    return predictor


def _check(path: Path) -> None:
    err = read_or_typed_error(_load, path)
    if isinstance(err, InputError):
        assert err.where == str(path) and "\n" not in str(err)


def test_damaged_bytes(tmp_path_factory, examples):
    path = tmp_path_factory.mktemp("ckpt_bytes") / "case.ckpt"
    seeds = [saved(checkpoint_object(SEG_ONLY, reference_state("seg")))]

    @fuzz_settings(examples)
    @given(data=mutations(seeds))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        _check(path)

    check()


# --- valid torch.save files, wrong content --------------------------------------------------------------

ODD_VALUES = [0, -1, 10**6, 2**62, 1.5, float("nan"), "x", None, True, [1], {"a": 1}]
CLASS_PATHS = [
    CLASS_PATH,
    5,
    "os.system",
    "medmtl.nothing.Net",
    "medmtl.",
    "medmtl.inference.Predictor",
    "medmtl.errors.InputError",
    "medmtl.models.recon_seg.recon_loss",
    "medmtl.models.recon_seg.ReconSegNet.forward",
    "medmtl.models.monai_varnet.MonaiVarNet",
]
CLASS_NAMES = [CLASSES, None, 3, "ab", [1, 2], ["only"], ["x"] * 1000, []]
TENSOR_EDITS = ["drop", "extra", "reshape", "float64", "float16", "int64", "bool", "complex64", "nan", "inf",
                "not_tensor", "int_key", "meta"]  # fmt: skip


@st.composite
def recipes(draw) -> dict[str, Any]:
    """A checkpoint as plain data (so failures print readably); ``_make`` builds and saves it."""
    recipe: dict[str, Any] = {"config": draw(st.sampled_from(["seg", "seg", "seg", "joint"]))}
    base = SEG_ONLY if recipe["config"] == "seg" else JOINT
    kind = draw(
        st.sampled_from(["args", "args", "tensors", "tensors", "classes", "class_path", "inflated", "top"])
    )
    recipe["kind"] = kind
    if kind == "args":
        recipe["init_args"] = draw(
            st.one_of(
                st.tuples(st.sampled_from([*base, "mode", "dc", "unknown"]), st.sampled_from(ODD_VALUES)),
                st.sampled_from([None, "chans=2", 7, [("chans", 2)], {1: 2}, {"num_cascades": 10**6}]),
            )
        )
    elif kind == "tensors":
        recipe["edits"] = draw(
            st.lists(st.tuples(st.sampled_from(TENSOR_EDITS), st.integers(0, 10**6)), min_size=1, max_size=3)
        )
    elif kind == "classes":
        recipe["classes"] = draw(st.sampled_from(CLASS_NAMES))
    elif kind == "class_path":
        recipe["class_path"] = draw(st.sampled_from(CLASS_PATHS))
    elif kind == "inflated":
        # Arguments asking for a huge network, with stride-0 tensors of exactly its shapes: a few bytes on
        # disk, terabytes once materialised.
        recipe["inflated"] = draw(
            st.sampled_from([("seg_chans", 4096), ("seg_chans", 2**20), ("num_classes", 10**7)])
        )
    else:
        recipe["top"] = draw(
            st.sampled_from(["list", "tensor", "none", "state_not_mapping", "no_hparams", "hparams_str"])
        )
    return recipe


def _edit_tensors(state: dict[Any, Any], edits: list[tuple[str, int]]) -> dict[Any, Any]:
    state = dict(state)
    for edit, pick in edits:
        keys = list(state)
        if not keys:
            break
        key = keys[pick % len(keys)]
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor) and edit not in ("drop", "extra", "int_key"):
            continue
        if edit == "drop":
            del state[key]
        elif edit == "extra":
            state[f"{key}_extra"] = torch.ones(2)
        elif edit == "reshape":
            state[key] = torch.ones(tensor.numel() + 1)
        elif edit in ("float64", "float16", "int64", "bool", "complex64"):
            state[key] = tensor.to(getattr(torch, edit))
        elif edit in ("nan", "inf") and tensor.is_floating_point():
            tensor = tensor.clone()
            tensor.view(-1)[pick % max(tensor.numel(), 1) :][:1] = float(edit)
            state[key] = tensor
        elif edit == "not_tensor":
            state[key] = [1.0, 2.0]
        elif edit == "int_key":
            state[pick] = state.pop(key)
        elif edit == "meta":
            state[key] = torch.empty_like(tensor, device="meta")
    return state


def _make(recipe: dict[str, Any]) -> Any:
    base = SEG_ONLY if recipe["config"] == "seg" else JOINT
    state = reference_state(recipe["config"])
    kind = recipe["kind"]
    if kind == "args":
        args = recipe["init_args"]
        init_args = {**base, args[0]: args[1]} if isinstance(args, tuple) else args
        return checkpoint_object(init_args, state)
    if kind == "tensors":
        return checkpoint_object(base, _edit_tensors(state, recipe["edits"]))
    if kind == "classes":
        return checkpoint_object(base, state, classes=recipe["classes"])
    if kind == "class_path":
        return checkpoint_object(base, state, class_path=recipe["class_path"])
    if kind == "inflated":
        init_args = {**base, recipe["inflated"][0]: recipe["inflated"][1]}
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in ReconSegNet(**init_args).state_dict().items()}
        return checkpoint_object(init_args, {k: torch.zeros(()).expand(shape) for k, shape in shapes.items()})
    return {
        "list": [1, 2],
        "tensor": torch.ones(3),
        "none": None,
        "state_not_mapping": {"state_dict": [1], "hyper_parameters": {}},
        "no_hparams": {"state_dict": {f"model.{k}": v for k, v in state.items()}},
        "hparams_str": {"state_dict": {}, "hyper_parameters": "model"},
    }[recipe["top"]]


def test_wrong_content(tmp_path_factory, examples):
    path = tmp_path_factory.mktemp("ckpt_content") / "case.ckpt"

    @fuzz_settings(examples)
    @given(recipe=recipes())
    def check(recipe: dict[str, Any]) -> None:
        path.write_bytes(saved(_make(recipe)))
        _check(path)

    check()


# --- specific refusals -----------------------------------------------------------------------------------


def test_valid_checkpoint_loads(tmp_path):
    path = tmp_path / "ok.ckpt"
    path.write_bytes(saved(checkpoint_object(JOINT, reference_state("joint"))))
    predictor = Predictor.from_checkpoint(path)
    for name, tensor in predictor.model.state_dict().items():
        assert torch.equal(tensor, reference_state("joint")[name]), name
    assert not any(t.is_meta for t in predictor.model.state_dict().values())


def test_stride_zero_tensors_are_not_materialised(tmp_path):
    """A few-KiB file whose arguments and stride-0 tensors describe a 70 GB network is refused untouched."""
    path = tmp_path / "inflated.ckpt"
    path.write_bytes(saved(_make({"config": "seg", "kind": "inflated", "inflated": ("seg_chans", 2**15)})))
    with memory_bound(256 << 20), pytest.raises(InputError, match="more than its"):
        Predictor.from_checkpoint(path)


@pytest.mark.timeout(60)
def test_huge_cascade_count_is_stopped_early(tmp_path):
    """num_cascades = 10**6 would take hours to build even on the meta device; it stops at the tensor budget."""
    path = tmp_path / "deep.ckpt"
    path.write_bytes(saved(checkpoint_object({**JOINT, "num_cascades": 10**6}, reference_state("joint"))))
    with pytest.raises(InputError, match="larger than"):
        Predictor.from_checkpoint(path)


def test_compressed_archive_member_is_refused_before_allocation(tmp_path):
    """torch.load allocates the size a compressed member declares; torch.save never compresses."""
    plain = saved(checkpoint_object(SEG_ONLY, reference_state("seg")))
    path = tmp_path / "deflated.ckpt"
    with zipfile.ZipFile(io.BytesIO(plain)) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with pytest.raises(InputError, match="compressed"):
        Predictor.from_checkpoint(path)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_weights_are_refused(tmp_path, value):
    path = tmp_path / "diverged.ckpt"
    state = _edit_tensors(reference_state("seg"), [(value, 0)])
    path.write_bytes(saved(checkpoint_object(SEG_ONLY, state)))
    with pytest.raises(InputError, match="NaN or Inf"):
        Predictor.from_checkpoint(path)
