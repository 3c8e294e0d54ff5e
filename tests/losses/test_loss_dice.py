"""Dice and Dice + CE against MONAI's DiceLoss / DiceCELoss (fp32, 1e-5), empty classes, masks,
gradients (gradcheck in float64), the custom op (opcheck), modules and input errors."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

from medmtl.errors import InputError
from medmtl.losses import DiceCELoss, DiceLoss, _dice_torch, dice_ce_loss, dice_loss

monai_losses = pytest.importorskip("monai.losses")

B, C = 2, 4
SPATIAL = (9, 7, 5)


@pytest.fixture(scope="module")
def data():
    """Logits (B, C, 9, 7, 5) and labels (B, 1, 9, 7, 5) where class 2 is absent from image 0 and
    class 3 from both images (the empty-class cases)."""
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(B, C, *SPATIAL, generator=g)
    labels = torch.randint(0, 3, (B, 1, *SPATIAL), generator=g)
    labels[0][labels[0] == 2] = 1
    return logits, labels


def _monai(cls, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**kw)


OPTIONS = list(
    itertools.product([True, False], [False, True], [False, True], [False, True], [None, [0.5, 1.0, 2.0, 3.0]])
)


@pytest.mark.parametrize(("include_background", "squared", "jaccard", "batch", "weight"), OPTIONS)
def test_softmax_labels_match_monai(data, include_background, squared, jaccard, batch, weight):
    logits, labels = data
    common = {"include_background": include_background, "squared_pred": squared, "jaccard": jaccard, "batch": batch}
    dice_weight = weight[1:] if (weight and not include_background) else weight
    ref = _monai(monai_losses.DiceLoss, to_onehot_y=True, softmax=True, weight=dice_weight, **common)(logits, labels)
    ours = dice_loss(logits, labels, class_weight=weight, **common)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    ref = _monai(
        monai_losses.DiceCELoss, to_onehot_y=True, softmax=True,
        weight=torch.tensor(weight) if weight else None, **common,
    )(logits, labels)  # fmt: skip
    assert dice_ce_loss(logits, labels, class_weight=weight, **common).item() == pytest.approx(ref.item(), abs=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_match_monai(data, reduction):
    logits, labels = data
    ref = _monai(monai_losses.DiceLoss, to_onehot_y=True, softmax=True, reduction=reduction)(logits, labels)
    ours = dice_loss(logits, labels, reduction=reduction)
    torch.testing.assert_close(ours, ref.reshape(ours.shape), atol=1e-5, rtol=1e-5)
    if reduction != "none":
        ref = _monai(monai_losses.DiceCELoss, to_onehot_y=True, softmax=True, reduction=reduction)(logits, labels)
        assert dice_ce_loss(logits, labels, reduction=reduction).item() == pytest.approx(ref.item(), rel=1e-5)


def test_dense_targets_and_labels_without_channel_agree_with_monai(data):
    logits, labels = data
    onehot = F.one_hot(labels[:, 0], C).movedim(-1, 1).float()
    ref = _monai(monai_losses.DiceCELoss, softmax=True)(logits, onehot)
    assert dice_ce_loss(logits, onehot).item() == pytest.approx(ref.item(), abs=1e-5)
    assert dice_ce_loss(logits, labels[:, 0]).item() == pytest.approx(ref.item(), abs=1e-5)
    soft = torch.softmax(torch.randn(onehot.shape, generator=torch.Generator().manual_seed(1)), 1)
    ref = _monai(monai_losses.DiceCELoss, softmax=True)(logits, soft)
    assert dice_ce_loss(logits, soft).item() == pytest.approx(ref.item(), abs=1e-5)


@pytest.mark.parametrize("weight", [None, 2.5])
def test_single_channel_sigmoid_matches_monai_bce(weight):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(B, 1, 11, 6, generator=g)
    target = (torch.rand(B, 1, 11, 6, generator=g) > 0.6).float()
    pos_weight = torch.tensor([weight]) if weight else None
    ref = _monai(monai_losses.DiceCELoss, sigmoid=True, weight=pos_weight)(logits, target)
    ours = dice_ce_loss(logits, target, activation="sigmoid", class_weight=[weight] if weight else None)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)


def test_multi_label_sigmoid_is_monai_dice_plus_per_class_bce():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(B, 3, 8, 9, generator=g)
    target = (torch.rand(B, 3, 8, 9, generator=g) > 0.5).float()
    target[1, 2] = 0  # an empty class
    ref_dice = _monai(monai_losses.DiceLoss, sigmoid=True)(logits, target)
    ref = ref_dice + F.binary_cross_entropy_with_logits(logits, target)
    assert dice_loss(logits, target, activation="sigmoid").item() == pytest.approx(ref_dice.item(), abs=1e-5)
    assert dice_ce_loss(logits, target, activation="sigmoid").item() == pytest.approx(ref.item(), abs=1e-5)


def test_probabilities_without_activation_match_monai(data):
    logits, labels = data
    probs = torch.softmax(logits, 1)
    ref = _monai(monai_losses.DiceLoss, to_onehot_y=True)(probs, labels)
    assert dice_loss(probs, labels, activation="none").item() == pytest.approx(ref.item(), abs=1e-5)


def test_binary_mask_equals_monai_on_masked_probabilities(data):
    logits, labels = data
    mask = torch.zeros(B, 1, *SPATIAL)
    mask[:, :, 2:7, 1:6] = 1
    onehot = F.one_hot(labels[:, 0], C).movedim(-1, 1).float()
    ref = _monai(monai_losses.DiceLoss)(torch.softmax(logits, 1) * mask, onehot * mask)
    assert dice_loss(logits, labels, mask=mask.bool()).item() == pytest.approx(ref.item(), abs=1e-5)
    # The mask weights the cross-entropy's voxels: CE over the masked voxels only.
    ce = F.cross_entropy(logits.movedim(1, -1)[mask[:, 0] > 0], labels[:, 0][mask[:, 0] > 0])
    assert dice_ce_loss(logits, labels, mask=mask).item() == pytest.approx((ref + ce).item(), abs=1e-5)


def test_empty_classes_follow_the_policy(data):
    logits, labels = data
    per_class = dice_loss(logits, labels, reduction="none")
    present = torch.stack([(labels == c).flatten(1).any(1) for c in range(C)], 1)
    assert not present[:, 3].any() and not present[0, 2]
    # include (MONAI): absent classes score about 1 with softmax outputs, and count in the mean.
    assert per_class[~present].min().item() > 0.99
    assert dice_loss(logits, labels).item() == pytest.approx(per_class.mean().item(), abs=1e-6)
    # ignore: they leave the mean, and are 0 in the per-class output.
    expected = per_class[present].mean().item()
    assert dice_loss(logits, labels, empty="ignore").item() == pytest.approx(expected, abs=1e-6)
    ignored = dice_loss(logits, labels, empty="ignore", reduction="none")
    assert torch.equal(ignored == 0, ~present)


def test_all_classes_empty_under_ignore_gives_zero_with_zero_gradient():
    logits = torch.randn(1, 3, 5, 6, requires_grad=True)
    target = torch.zeros(1, 3, 5, 6)
    loss = dice_loss(logits, target, activation="sigmoid", empty="ignore")
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize(
    ("activation", "dense", "squared", "use_mask"),
    [("softmax", False, False, True), ("softmax", True, True, False), ("sigmoid", True, False, True)],
)
def test_gradients_pass_gradcheck_in_float64(activation, dense, squared, use_mask):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 5, 4), generator=g)
    target = F.one_hot(labels[:, 0], 3).movedim(-1, 1).double() * 0.9 + 0.03 if dense else labels
    mask = torch.rand(2, 1, 5, 4, generator=g, dtype=torch.float64) if use_mask else None
    options = {"activation": activation, "squared_pred": squared, "mask": mask, "class_weight": [0.5, 1.0, 2.0]}
    assert torch.autograd.gradcheck(lambda z: dice_ce_loss(z, target, **options), (logits,))
    assert torch.autograd.gradcheck(lambda z: dice_loss(z, target, jaccard=True, **options), (logits,))


def test_modules_match_the_functions(data):
    logits, labels = data
    assert DiceLoss(include_background=False)(logits, labels).item() == pytest.approx(
        dice_loss(logits, labels, include_background=False).item()
    )
    assert DiceCELoss(lambda_ce=0.5)(logits, labels).item() == pytest.approx(
        dice_ce_loss(logits, labels, lambda_ce=0.5).item()
    )
    with pytest.raises(TypeError, match="to_onehot_y"):
        DiceLoss(to_onehot_y=True)


@pytest.mark.parametrize(
    ("logits", "target", "kwargs", "words"),
    [
        (torch.randn(2, 3, 4, 4), torch.zeros(2, 2, 4, 4), {}, "must be labels"),
        (torch.randn(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), {}, "softmax needs at least 2 channels"),
        (torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), {"activation": "sigmoid"}, "dense targets"),
        (torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), {"activation": "tanh"}, "activation must be"),
        (torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), {"class_weight": [1.0, 2.0]}, "one value per class"),
        (torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), {"empty": "skip"}, "empty must be"),
        (torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), {"mask": torch.ones(3, 1, 4, 4)}, "does not broadcast"),
        (torch.randn(2, 3, 4), torch.zeros(2, 1, 4), {"reduction": "max"}, "reduction must be"),
    ],
)
def test_bad_inputs_raise_input_errors(logits, target, kwargs, words):
    with pytest.raises(InputError, match=r"^dice_loss: ") as info:
        dice_loss(logits, target, **kwargs)
    assert words in str(info.value)


def test_dice_ce_needs_logits():
    with pytest.raises(InputError, match=r"^dice_ce_loss: .*needs logits"):
        dice_ce_loss(torch.rand(1, 2, 4, 4), torch.zeros(1, 1, 4, 4), activation="none")


def test_custom_ops_pass_opcheck():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 37, generator=g, requires_grad=True)
    labels = torch.randint(0, 3, (2, 37), generator=g)
    weight = torch.rand(2, 37, generator=g)
    cw = torch.tensor([0.5, 1.0, 2.0])
    torch.library.opcheck(
        torch.ops.medmtl.dice_sums.default, (logits, labels, weight, cw, "softmax", True, True, False)
    )
    grads = (torch.randn(2, 3, 3, generator=g), torch.randn(2, 2, generator=g))
    torch.library.opcheck(
        torch.ops.medmtl.dice_sums_backward.default,
        (*grads, logits.detach(), labels, None, None, "softmax", False, True, False),
    )


def test_float32_label_sums_stay_within_float32_rounding_over_a_million_voxels():
    """The label path's per-class sums accumulate in float64: a float32 matrix-vector product drifted by
    1e-3 relative over 1M voxels on CPU, and scatter_add adds one voxel at a time."""
    g = torch.Generator().manual_seed(11)
    logits = 3 * torch.randn(2, 3, 2**20, generator=g)
    labels = torch.randint(0, 3, (2, 2**20), generator=g)
    weight = torch.rand(2, 2**20, generator=g)
    sums, ce = _dice_torch.dice_sums(logits, labels, weight, None, "softmax", False, True)
    exact, exact_ce = _dice_torch.dice_sums(logits.double(), labels, weight.double(), None, "softmax", False, True)
    torch.testing.assert_close(sums.double(), exact, rtol=1e-6, atol=0)
    torch.testing.assert_close(ce.double(), exact_ce, rtol=1e-6, atol=0)
