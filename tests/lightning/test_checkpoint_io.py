"""AtomicCheckpointIO: atomic writes that survive a failed save, and one clear error per unreadable file."""

from __future__ import annotations

import os

import pytest
import torch
from fit_probe import tiny_config

from medmtl.errors import InputError
from medmtl.lightning.checkpoint_io import AtomicCheckpointIO, previous_checkpoint
from medmtl.lightning.cli import MultitaskCLI

CHECKPOINT = {"state_dict": {"w": torch.arange(4.0)}, "global_step": 3}


def test_save_and_load_round_trip_leaves_no_temporary_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(CHECKPOINT, path)
    loaded = io.load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["w"], CHECKPOINT["state_dict"]["w"])
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(CHECKPOINT, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 (whatever pickle raises for a lambda)
        io.save_checkpoint({"state_dict": {}, "bad": lambda: None}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize(
    ("write", "words"),
    [
        (lambda p: p.write_bytes(b""), "EOFError"),
        (lambda p: p.write_bytes(b"PK\x03\x04 half a zip"), "cannot be read as a checkpoint"),
        (lambda p: torch.save(torch.zeros(2), p), "no state_dict"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: None, "no such checkpoint file"),
    ],
    ids=["empty", "truncated", "tensor", "folder", "missing"],
)
def test_unreadable_checkpoints_raise_input_error_naming_the_file(tmp_path, write, words):
    path = tmp_path / "last.ckpt"
    write(path)
    with pytest.raises(InputError, match=words) as info:
        AtomicCheckpointIO().load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_the_hint_names_the_newest_other_checkpoint(tmp_path):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError, match="no other checkpoint is in its folder"):
        AtomicCheckpointIO().load_checkpoint(bad)
    older, newer = tmp_path / "epoch=0-step=2.ckpt", tmp_path / "epoch=0-step=1.ckpt"
    for seconds, path in ((1_000, older), (2_000, newer)):
        path.write_bytes(b"x")
        os.utime(path, (seconds, seconds))
    assert previous_checkpoint(bad) == newer  # by time written, not by name
    with pytest.raises(InputError, match=f"resume from the previous checkpoint, {newer}"):
        AtomicCheckpointIO().load_checkpoint(bad)


def test_the_cli_writes_through_atomic_checkpoint_io(tmp_path):
    config = tiny_config(tmp_path, trainer={"max_steps": 0, "deterministic": False})
    cli = MultitaskCLI(["fit", "-c", str(config)])
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
