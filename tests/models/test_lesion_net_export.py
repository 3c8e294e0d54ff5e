"""ONNX export of a tiny ``LesionNet`` with dynamic batch, height and width (dynamo exporter), run by onnxruntime
at another batch and size than the trace: the same raw outputs and the same decoded detections."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medmtl.models.lesion_decode import decode_detections
from medmtl.models.lesion_net import LesionNet, LesionOutput

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


class _Outputs(nn.Module):
    """The network with a tuple of tensors as output, as an ONNX graph has."""

    def __init__(self, net: LesionNet):
        super().__init__()
        self.net = net

    def forward(self, context, slice_position, clinical):
        return tuple(self.net(context, slice_position, clinical))


def _inputs(batch: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.rand(batch, 9, height, width, generator=gen),
        torch.rand(batch, generator=gen),
        torch.rand(batch, 2, generator=gen),
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    net = LesionNet(num_tags=3, widths=(4, 8), refine_hidden=4, num_clinical=2)
    with torch.no_grad():  # spread the outputs (the refinement starts as the identity, the fusion at zero)
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model = _Outputs(net).eval()
    path = tmp_path_factory.mktemp("lesion") / "lesion.onnx"
    auto = torch.export.Dim.AUTO
    torch.onnx.export(
        model,
        _inputs(2, 32, 40, seed=0),
        path,
        dynamo=True,
        dynamic_shapes=({0: auto, 2: auto, 3: auto}, {0: auto}, {0: auto}),
        verbose=False,
    )
    return model, path


def test_exported_graph_has_symbolic_batch_and_size(exported):
    _, path = exported
    context = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in context] == [True, False, True, True]


def test_onnxruntime_matches_pytorch_at_another_size(exported):
    model, path = exported
    inputs = _inputs(3, 29, 23, seed=1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    got = LesionOutput(*session.run(None, feeds))
    with torch.no_grad():
        want = LesionOutput(*model(*inputs))
    assert got.mask.shape == (3, 1, 29, 23) and got.heatmap.shape == (3, 1, 8, 6)
    for name, g, w in zip(LesionOutput._fields, got, want, strict=True):
        assert np.abs(g - w.numpy()).max() <= 1e-4, name

    options = {"pixel_spacing": [0.8, 0.6], "score_threshold": 0.0, "top_k": 12}
    from_onnx, from_torch = decode_detections(got, **options), decode_detections(want, **options)
    for a, b in zip(from_onnx, from_torch, strict=True):
        assert len(a.boxes) == len(b.boxes) > 0
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        np.testing.assert_allclose(a.tags, b.tags, atol=1e-5)
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_allclose(a.long_axis_mm, b.long_axis_mm, atol=1e-5)
