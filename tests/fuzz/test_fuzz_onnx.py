"""Fuzzing ONNX loading (``medmtl.onnx_model.OnnxNetwork``): damaged bytes of a small valid medmtl export, and
valid ONNX files with wrong content (metadata that is missing, not JSON or of another task; inputs of the
wrong names or ranks; initializers that declare huge sizes without the data, or external data outside the
model's folder). Only ``MedmtlError`` may come out, within the time and memory bounds of ``fuzz_support``.

The seed is a hand-built graph that follows the recon+seg contract (three rank-5 inputs; a reconstruction
and logits from them), so the fuzzed files reach every check ``OnnxNetwork`` makes, not only the parser.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from fuzz_support import fuzz_examples, fuzz_settings, mutations, read_or_typed_error
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

from medmtl.errors import InputError
from medmtl.onnx_model import (
    FORMAT_VERSION,
    META_CLASSES,
    META_FORMAT,
    META_TASK,
    META_TASKS,
    RECON_SEG_INPUTS,
    OnnxNetwork,
)

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
METADATA = {
    META_FORMAT: FORMAT_VERSION,
    META_TASK: "recon_seg",
    META_TASKS: json.dumps(["recon", "seg"]),
    META_CLASSES: json.dumps(["background", "tissue"]),
}


@pytest.fixture
def examples(request) -> int:
    return fuzz_examples(request)


def contract_model(
    metadata: dict[str, str] = METADATA,
    input_names=RECON_SEG_INPUTS,
    rank: int = 5,
    weight_dims=(2,),
    weight_data: bool = True,
) -> onnx.ModelProto:
    """reconstruction = sum of |kspace| over coils and the pair (B, H, W); logits = weight x (mask, acs)."""
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"d{i}" for i in range(rank)])
        for name in input_names
    ]
    outputs = [
        helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("segmentation_logits", TensorProto.FLOAT, None),
    ]
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, -1.0])
    weight.ClearField("dims")
    weight.dims.extend(weight_dims)  # may declare far more elements than it holds
    if not weight_data:
        weight.ClearField("float_data")
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 4, 4])
    nodes = [
        helper.make_node("Abs", [input_names[0]], ["a"]),
        helper.make_node("ReduceSum", ["a", "axes"], ["reconstruction"], keepdims=0),
        helper.make_node("Concat", [input_names[1], input_names[2]], ["m"], axis=1),
        helper.make_node("Mul", ["m", "w"], ["segmentation_logits"]),
    ]
    graph = helper.make_graph(nodes, "contract", inputs, outputs, initializer=[weight, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    return model


def _check(path) -> None:
    result = read_or_typed_error(OnnxNetwork, path)
    if isinstance(result, OnnxNetwork):  # it loaded: running it must also end well or with a typed error
        kspace = torch.ones(1, 2, 3, 4, 2)
        mask = torch.ones(1, 1, 1, 4, 1)
        read_or_typed_error(result, kspace, mask, mask)


def test_seed_model_loads_and_runs(tmp_path):
    path = tmp_path / "ok.onnx"
    onnx.save(contract_model(), path)
    out = OnnxNetwork(path)(torch.ones(2, 3, 5, 4, 2), torch.ones(2, 1, 1, 4, 1), torch.ones(2, 1, 1, 4, 1))
    np.testing.assert_allclose(out.recon.numpy(), np.full((2, 5, 4), 6.0))
    assert out.seg_logits.shape == (2, 2, 5, 4, 2)  # (mask, acs) x the weight pair


def test_damaged_bytes(tmp_path_factory, examples):
    path = tmp_path_factory.mktemp("onnx_bytes") / "case.onnx"
    seeds = [contract_model().SerializeToString()]

    @fuzz_settings(examples)
    @given(data=mutations(seeds, header_bytes=256))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        _check(path)

    check()


@st.composite
def wrong_models(draw) -> onnx.ModelProto:
    metadata = dict(METADATA)
    for key in draw(st.lists(st.sampled_from(sorted(METADATA)), max_size=2)):
        if draw(st.booleans()):
            metadata.pop(key, None)
        else:
            metadata[key] = draw(st.sampled_from(["", "{", "[1, 2]", '"x"', "lesion", "2", '["recon"]']))
    names = draw(st.sampled_from([RECON_SEG_INPUTS, ("kspace", "mask", "other"), ("a", "b", "c")]))
    rank = draw(st.sampled_from([5, 4, 6]))
    dims = draw(st.sampled_from([(2,), (2**40,), (2**31, 2**31), (0,)]))
    return contract_model(metadata, names, rank, dims, weight_data=draw(st.booleans()))


def test_wrong_content(tmp_path_factory, examples):
    path = tmp_path_factory.mktemp("onnx_content") / "case.onnx"

    @fuzz_settings(examples)
    @given(model=wrong_models())
    def check(model: onnx.ModelProto) -> None:
        path.write_bytes(model.SerializeToString())
        _check(path)

    check()


@pytest.mark.parametrize("location", ["../../outside.bin", "/etc/hostname", "missing.bin"])
def test_external_data_outside_the_folder_or_missing_is_refused(tmp_path, location):
    model = contract_model()
    weight = model.graph.initializer[0]
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        weight.external_data.add(key=key, value=value)
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir()
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InputError, match="is not a loadable ONNX model"):
        OnnxNetwork(path)
