"""LesionPredictor: a perfect network's lesions come back as findings and labels, inputs are what training
sees, batches do not matter, clinical inputs and checkpoints are checked."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from lesion_files import save_lesion_checkpoint

from medmtl.data.lesion_dataset import slice_sample
from medmtl.data.lesion_geometry import measure_recist
from medmtl.data.lesion_record import LesionVolume
from medmtl.data.lesion_sim import LesionSimOptions, simulate_lesion_volume
from medmtl.errors import InputError
from medmtl.keys import Keys
from medmtl.lesion_findings import patient_box
from medmtl.lesion_inference import LesionPredictor, clinical_inputs
from medmtl.models.lesion_decode import STRIDE, encode_targets
from medmtl.models.lesion_net import LesionNet, LesionOutput

TINY = {"widths": (4, 8), "refine_hidden": 4}
SPACING = np.array([0.7, 0.8, 2.0])
AFFINE = np.array([[0, -0.8, 0, 12.0], [0.7, 0, 0, -3.0], [0, 0, 2.0, 40.0], [0, 0, 0, 1]])
SHAPE = (30, 26, 8)


def lesion_labels() -> np.ndarray:
    """Lesion 1 on k = 2..4, largest on 3, a one-pixel cap on 4; lesion 2 on k = 0 in the image's corner;
    lesion 3 on the last two slices, largest on the last."""
    labels = np.zeros(SHAPE, np.int32)
    labels[6:9, 6:9, 2] = 1
    labels[7, 7, 4] = 1
    labels[5:10, 5:11, 3] = 1
    labels[0:4, 0:5, 0] = 2
    labels[18:22, 14:20, 6] = 3
    labels[18:22, 13:20, 7] = 3
    return labels


class PerfectNet:
    """Gives the logits a perfect network would for ``labels``: peaks of logit ``logits[n - 1]`` at each
    lesion's centre with its exact size and offset, tag n % 2, and its mask; slice k from the position."""

    num_slices, interval_mm, window, num_clinical = 3, 2.0, None, 0
    tag_names, tasks = ("even", "odd"), ("det", "tag", "mask")

    def __init__(self, labels: np.ndarray, logits=(2.0, 1.0, 3.0)):
        self.labels, self.logits = labels, logits

    def __call__(self, context, slice_position, clinical, patient_frame=None):
        b, _, height, width = context.shape
        h, w = -(-height // STRIDE), -(-width // STRIDE)
        heatmap, tags = torch.full((b, 1, h, w), -20.0), torch.full((b, 2, h, w), -20.0)
        size, offset = torch.zeros(b, 2, h, w), torch.zeros(b, 2, h, w)
        mask = torch.full((b, 1, height, width), -20.0)
        for n, position in enumerate(slice_position.tolist()):
            plane = self.labels[:, :, round(position * (self.labels.shape[2] - 1))]
            for label in np.unique(plane[plane > 0]):
                ii, jj = np.nonzero(plane == label)
                box = [[ii.min(), jj.min(), ii.max() + 1, jj.max() + 1]]
                t = encode_targets(np.array(box, np.float32), h, w)
                u, v = t.cells // w, t.cells % w
                heatmap[n, 0, u, v] = self.logits[label - 1]
                size[n, :, u, v], offset[n, :, u, v] = t.size.T, t.offset.T
                tags[n, label % 2, u, v] = 20.0
            mask[n, 0][torch.from_numpy(plane > 0)] = 20.0
        return LesionOutput(heatmap, None, size, offset, tags, None, mask)


def volume(image=None, labels=None, meta=None) -> LesionVolume:
    labels = lesion_labels() if labels is None else labels
    image = np.random.default_rng(3).normal(100, 20, SHAPE).astype(np.float32) if image is None else image
    return LesionVolume(image, SPACING, AFFINE, labels, (), (), "vol", meta or {})


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_a_perfect_network_gives_back_its_lesions(batch_size):
    labels = lesion_labels()
    done = []
    result = LesionPredictor(PerfectNet(labels), batch_size=batch_size).predict_volume(
        volume(), progress=done.append
    )
    assert sum(done) == SHAPE[2] and len(done) == -(-SHAPE[2] // batch_size)
    # ranked by score: lesion 3 (logit 3), 1 (logit 2), 2 (logit 1)
    order = (3, 1, 2)
    relabelled = np.zeros_like(labels)
    for rank, label in enumerate(order, 1):
        relabelled[labels == label] = rank
    np.testing.assert_array_equal(result.instances, relabelled)
    expected = {  # box, key slice, odd tag
        3: ((18, 13, 6, 22, 20, 8), 7, True),
        1: ((5, 5, 2, 10, 11, 5), 3, True),
        2: ((0, 0, 0, 4, 5, 1), 0, False),
    }
    for finding, label in zip(result.findings, order, strict=True):
        box, key, odd = expected[label]
        assert finding.box_voxel == box and finding.key_slice == key
        assert finding.score == pytest.approx(1 / (1 + np.exp(-PerfectNet(labels).logits[label - 1])))
        assert finding.tags["odd"] == pytest.approx(float(odd), abs=1e-6)
        long_mm, short_mm, _ = measure_recist(labels[:, :, key] == label, SPACING)
        assert (finding.long_axis_mm, finding.short_axis_mm) == pytest.approx((long_mm, short_mm), rel=1e-5)
        np.testing.assert_allclose(finding.box_patient_mm, patient_box(box, AFFINE))


def test_a_perfect_detector_finds_the_simulated_lesions():
    """MNI lesions (``lesion_sim``) taper to one-voxel ends; each must come back as one finding with the
    simulator's box, key slice and RECIST axes."""
    vol = simulate_lesion_volume(2, "val", options=LesionSimOptions(voxel_mm=2.0), orientation="axial")
    assert len(vol.lesions) >= 3
    net = PerfectNet(vol.instances, logits=tuple(np.linspace(3.0, 1.0, len(vol.lesions))))
    findings = LesionPredictor(net, batch_size=32).predict_volume(vol).findings
    assert len(findings) == len(vol.lesions)
    for finding, lesion in zip(findings, vol.lesions, strict=True):  # logits fall with the label
        assert finding.box_voxel == tuple(int(v) for v in lesion.box)
        assert finding.key_slice == lesion.key_slice
        assert finding.long_axis_mm == pytest.approx(lesion.long_axis_mm, rel=1e-5)
        assert finding.short_axis_mm == pytest.approx(lesion.short_axis_mm, rel=1e-5)


class Recorder:
    """A tiny LesionNet that records its inputs."""

    def __init__(self, window=None, **kwargs):
        torch.manual_seed(0)
        self.net = LesionNet(**TINY, window=window, **kwargs).eval()
        self.calls = []
        for name in ("num_slices", "interval_mm", "window", "tag_names", "num_clinical", "tasks"):
            setattr(self, name, getattr(self.net, name))

    def __call__(self, context, slice_position, clinical, patient_frame=None):
        self.calls.append((context.clone(), slice_position.clone(), clinical, patient_frame))
        return self.net(context, slice_position, clinical, patient_frame)


@pytest.mark.parametrize("window", [None, (80.0, 120.0)])
def test_inputs_are_the_training_samples(window):
    recorder = Recorder(window=window)
    vol = volume(labels=np.zeros(SHAPE, np.int32))  # slice_sample would look up the lesions' records
    LesionPredictor(recorder, batch_size=3).predict_volume(vol)
    context = torch.cat([c for c, *_ in recorder.calls])
    position = torch.cat([p for _, p, *_ in recorder.calls])
    frames = torch.cat([f for *_, f in recorder.calls])
    assert context.shape == (SHAPE[2], recorder.num_slices, *SHAPE[:2])
    for k in range(SHAPE[2]):
        sample = slice_sample(vol, k, recorder.num_slices, recorder.interval_mm, window)
        torch.testing.assert_close(context[k], sample[Keys.CONTEXT], rtol=0, atol=0)
        assert position[k].item() == sample[Keys.SLICE_POSITION].item()
        torch.testing.assert_close(frames[k], sample[Keys.PATIENT_FRAME], rtol=0, atol=0)
    assert (context.min() < 0) == (window is None)  # a window clips to [0, 1]


def test_batches_do_not_change_the_findings():
    vol = volume()
    net = Recorder().net
    results = [LesionPredictor(net, batch_size=b).predict_volume(vol) for b in (1, 5)]
    # Batches change the convolutions' summation order only: the same findings, scores within rounding.
    one, five = (r.to_json()["findings"] for r in results)
    assert [(f["box_voxel"], f["key_slice"]) for f in one] == [(f["box_voxel"], f["key_slice"]) for f in five]
    assert [f["score"] for f in one] == pytest.approx([f["score"] for f in five], abs=1e-5)
    np.testing.assert_array_equal(results[0].instances, results[1].instances)
    assert one  # an untrained net's peaks sit near the 0.1 prior, the default threshold
    fewer = LesionPredictor(net, score_threshold=0.2).predict_volume(vol)
    assert all(f.score >= 0.2 for f in fewer.findings) and len(fewer.findings) < len(results[0].findings)


@pytest.mark.parametrize("shape", [(17, 23, 1), (33, 9, 3)])
def test_odd_sizes_and_a_single_slice(shape):
    image = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    vol = LesionVolume(image, SPACING, AFFINE, np.zeros(shape, np.int32), (), (), "odd")
    recorder = Recorder()
    result = LesionPredictor(recorder, batch_size=2).predict_volume(vol)
    assert result.instances.shape == shape and result.instances.dtype == np.int32
    assert torch.cat([p for _, p, *_ in recorder.calls]).tolist() == [
        k / max(shape[2] - 1, 1) for k in range(shape[2])
    ]
    for f in result.findings:
        i0, j0, k0, i1, j1, k1 = f.box_voxel
        assert 0 <= i0 < i1 <= shape[0] and 0 <= j0 < j1 <= shape[1] and 0 <= k0 < k1 <= shape[2]


def test_clinical_inputs():
    recorder = Recorder(num_clinical=2)
    predictor = LesionPredictor(recorder)
    with pytest.raises(InputError, match=r"^vol: clinical inputs: .*no age or sex"):
        predictor.predict_volume(volume())
    with pytest.raises(InputError, match=r"^vol: sex: must be F or M"):
        predictor.predict_volume(volume(meta={"age": 50, "sex": "X"}))
    predictor.predict_volume(volume(meta={"age": 62.0, "sex": "f"}))
    clinical = recorder.calls[-1][2]
    torch.testing.assert_close(clinical, torch.tensor([[0.62, 0.0]]).expand(len(clinical), 2))
    with pytest.raises(InputError, match="age"):
        clinical_inputs({"age": -1, "sex": "M"}, 2)
    with pytest.raises(InputError, match="reads 3 clinical inputs"):
        clinical_inputs({"age": 1, "sex": "M"}, 3)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"image": np.zeros((30, 26), np.float32)}, "expected a 3D volume"),
        ({"spacing": np.array([0.7, 0.0, 2.0])}, "finite voxel sizes"),
        ({"spacing": np.array([0.7, np.nan, 2.0])}, "finite voxel sizes"),
    ],
)
def test_bad_volumes(change, match):
    with pytest.raises(InputError, match=f"^vol: .*{match}"):
        LesionPredictor(PerfectNet(lesion_labels())).predict_volume(replace(volume(), **change))


def test_only_lesion_networks_and_sane_options():
    with pytest.raises(InputError, match="no lesion network"):
        LesionPredictor(torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(InputError, match="batch_size"):
        LesionPredictor(PerfectNet(lesion_labels()), batch_size=0)
    with pytest.raises(InputError, match="score_threshold"):
        LesionPredictor(PerfectNet(lesion_labels()), score_threshold=1.5)
    with pytest.raises(InputError, match=r"model\.onnx"):
        LesionPredictor.load("model.onnx")  # missing: the ONNX loader's error, naming the file


def test_from_checkpoint(tmp_path):
    path = save_lesion_checkpoint(
        tmp_path / "lesion.ckpt", {"widths": [4, 8], "refine_hidden": 4, "tasks": ["det"]}, seed=1
    )
    predictor = LesionPredictor.load(path, batch_size=2)
    torch.manual_seed(1)
    expected = LesionNet(widths=(4, 8), refine_hidden=4, tasks=("det",)).state_dict()
    for key, value in predictor.network.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    assert predictor.tag_names == ()  # no tag task, no tags
    result = predictor.predict_volume(volume())
    assert all(f.tags == {} and np.isnan(f.long_axis_mm) for f in result.findings)
    with pytest.raises(InputError, match="batch_size"):
        LesionPredictor.load(path, batch_size=0)  # an option's error is not the file's


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    from conftest import TINY_NET

    from medmtl.models.recon_seg import ReconSegNet

    path = tmp_path / "recon.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in ReconSegNet(**TINY_NET).state_dict().items()},
            "hyper_parameters": {
                "model": {"class_path": "medmtl.models.recon_seg.ReconSegNet", "init_args": TINY_NET}
            },
        },
        path,
    )
    with pytest.raises(InputError, match=r"recon.ckpt: holds a network that is no lesion network"):
        LesionPredictor.from_checkpoint(path)
