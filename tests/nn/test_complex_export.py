"""ONNX export of a small complex block: real tensors only in the graph, onnxruntime matches torch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmtl.nn.complex import ComplexBatchNorm2d, ComplexConv2d, ModReLU

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the dynamo exporter, torch.onnx.export's default, needs it


def test_conv_norm_modrelu_exports_without_complex_types(tmp_path):
    torch.manual_seed(0)
    # 1 -> 8 takes the block formulation, 32 -> 2 Gauss's (CPU, >= 32 input channels).
    model = nn.Sequential(
        ComplexConv2d(1, 32, 3, padding=1),
        ComplexBatchNorm2d(32),
        ModReLU(32, bias_init=-0.1),
        ComplexConv2d(32, 2, 3, padding=1),
    )
    model(torch.randn(4, 1, 9, 7, 2))  # one training step gives the running statistics non-trivial values
    model.eval()
    x = torch.randn(2, 1, 9, 7, 2)
    path = tmp_path / "complex_block.onnx"
    batch, height, width = torch.export.Dim("batch"), torch.export.Dim("height"), torch.export.Dim("width")
    torch.onnx.export(
        model, (x,), path, dynamo=True, dynamic_shapes=({0: batch, 2: height, 3: width},), verbose=False
    )

    graph = onnx.shape_inference.infer_shapes(onnx.load(path)).graph
    complex_types = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
    values = [*graph.input, *graph.output, *graph.value_info]
    assert not [v.name for v in values if v.type.tensor_type.elem_type in complex_types]
    assert not [t.name for t in graph.initializer if t.data_type in complex_types]
    ops = {node.op_type for node in graph.node}
    assert "Conv" in ops
    assert not ops & {"DFT", "Complex", "STFT"}

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x_other = torch.randn(3, 1, 11, 6, 2)  # another batch and odd spatial size through the dynamic axes
    (out,) = session.run(None, {session.get_inputs()[0].name: x_other.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x_other), rtol=1e-4, atol=1e-5)
