"""MultitaskModule's init_weights (a fine-tune from a checkpoint) and train_only (the rest frozen)."""

from __future__ import annotations

import pytest
import torch
from fit_probe import tiny_config

from medmtl.cli import main
from medmtl.errors import ConfigError, InputError
from medmtl.lightning.module import freeze_except, load_initial_weights
from medmtl.models.lesion_net import LesionNet
from medmtl.models.recon_seg import ReconSegNet


def _network(path):
    state = torch.load(path, weights_only=False)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def test_a_fine_tune_starts_from_the_checkpoint_and_trains_only_what_it_names(tmp_path):
    first = tiny_config(tmp_path / "a", trainer={"max_steps": 2})
    assert main(["fit", "-c", str(first)]) == 0
    start = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    model = {"init_weights": str(start), "train_only": ["seg_net"]}
    second = tiny_config(tmp_path / "b", trainer={"max_steps": 2})
    assert main(["fit", "-c", str(second), *[f"--model.{k}={v}" for k, v in model.items()]]) == 0
    before, after = _network(start), _network(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert before.keys() == after.keys()
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same != name.startswith("seg_net."), name  # frozen: unchanged; trained: moved


def _checkpoint(path, net):
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
    return str(path)


def test_grown_input_channels_take_the_stored_weights_first(tmp_path):
    torch.manual_seed(0)
    box = LesionNet(num_tags=3, widths=(4, 8), tag_pooling="box")
    outline = LesionNet(num_tags=3, widths=(4, 8), tag_pooling="outline")
    stored, grown = box.tag_head.classify[0].weight, outline.tag_head.classify[0].weight
    n = stored.shape[1]
    with torch.no_grad():
        grown[:, n:] = 0.25  # this network's own weights for the new inputs
    load_initial_weights(outline, _checkpoint(tmp_path / "box.ckpt", box))
    torch.testing.assert_close(grown[:, :n], stored)
    assert (grown[:, n:] == 0.25).all()  # kept, not reset
    torch.testing.assert_close(outline.trunk.state_dict(), box.trunk.state_dict())
    assert (
        not LesionNet(num_tags=3, widths=(4, 8), tag_pooling="outline")
        .tag_head.classify[0]
        .weight[:, n:]
        .any()
    )


def test_a_checkpoint_of_another_network_is_one_clear_error(tmp_path):
    small = _checkpoint(tmp_path / "small.ckpt", LesionNet(num_tags=3, widths=(4, 8)))
    with pytest.raises(InputError, match="init_weights: names differ"):
        load_initial_weights(LesionNet(num_tags=3, widths=(4, 8, 8)), small)
    other = _checkpoint(tmp_path / "tags.ckpt", LesionNet(num_tags=2, widths=(4, 8)))
    with pytest.raises(InputError, match=r"init_weights: tag_head\.\S+ is \(2, "):
        load_initial_weights(LesionNet(num_tags=3, widths=(4, 8)), other)
    with pytest.raises(InputError, match="no such checkpoint"):
        load_initial_weights(LesionNet(num_tags=3, widths=(4, 8)), str(tmp_path / "missing.ckpt"))


def test_skipped_names_may_differ_and_keep_their_initial_values(tmp_path):
    # A gradient-step network starts a conjugate-gradient one: only the data-consistency weights differ.
    tiny = {"num_cascades": 2, "chans": 2, "pools": 1, "sens_chans": 2, "sens_pools": 1, "seg_chans": 4}
    torch.manual_seed(0)
    gradient = ReconSegNet(**tiny, dc="gradient")
    path = _checkpoint(tmp_path / "gradient.ckpt", gradient)
    cg = ReconSegNet(**tiny, dc="cg")
    initial = {k: v.clone() for k, v in cg.state_dict().items()}
    with pytest.raises(InputError, match=r"missing \['cascades\.0\.dc\.log_lam'"):
        load_initial_weights(cg, path)
    load_initial_weights(cg, path, skip=["cascades.*.dc.*"])
    for name, value in cg.state_dict().items():
        expected = initial[name] if ".dc." in name else gradient.state_dict()[name]
        assert torch.equal(value, expected), name
    with pytest.raises(InputError, match="names differ"):  # a pattern covers only what it matches
        load_initial_weights(cg, path, skip=["cascades.0.dc.*"])
    # Names on both sides that a pattern matches are not copied either (a head to start afresh).
    fresh = ReconSegNet(**tiny, dc="gradient")
    initial = {k: v.clone() for k, v in fresh.state_dict().items()}
    load_initial_weights(fresh, path, skip=["seg_net.*"])
    for name, value in fresh.state_dict().items():
        expected = initial[name] if name.startswith("seg_net.") else gradient.state_dict()[name]
        assert torch.equal(value, expected), name


def test_train_only_names_submodules():
    net = LesionNet(num_tags=3, widths=(4, 8))
    freeze_except(net, ["tag_head"])
    trained = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trained == {"tag_head"}
    with pytest.raises(ConfigError, match=r"train_only.*tag_hed"):
        freeze_except(net, ["tag_hed"])
