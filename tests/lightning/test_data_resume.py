"""EpochSampler's shards and resume point, and MultitaskDataModule's data position through a real Lightning
resume with prefetching worker processes (the loader runs ahead of the training loop; the position must not)."""

from __future__ import annotations

from collections import Counter

import lightning
import pytest
import torch

from medmtl.data.datamodule import MultitaskDataModule
from medmtl.data.mni import SimulationOptions
from medmtl.data.online import EpochSampler
from medmtl.keys import Keys


def shares(n: int, replicas: int, drop_last: bool, epoch: int = 0) -> list[list[int]]:
    out = []
    for rank in range(replicas):
        sampler = EpochSampler(n, shuffle=True, seed=5, num_replicas=replicas, rank=rank, drop_last=drop_last)
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert {e for e, _ in keys} <= {epoch} and len(keys) == len(sampler)
        out.append([i for _, i in keys])
    return out


@pytest.mark.parametrize(("n", "replicas"), [(1, 1), (7, 1), (8, 2), (7, 2), (10, 3), (3, 3), (5, 4)])
def test_shards_never_repeat_a_key(n, replicas):
    even = shares(n, replicas, drop_last=True)
    assert {len(s) for s in even} == {n // replicas}
    assert max(Counter(i for s in even for i in s).values(), default=1) == 1
    every = shares(n, replicas, drop_last=False)
    assert sorted(i for s in every for i in s) == list(range(n))
    assert max(map(len, every)) - min(map(len, every)) <= 1
    if n >= 3:
        assert shares(n, replicas, drop_last=False, epoch=1) != every  # reshuffled per epoch


@pytest.mark.parametrize(("replicas", "consumed"), [(1, 0), (1, 3), (2, 4), (2, 8), (3, 6)])
def test_resume_skips_exactly_what_the_processes_took(replicas, consumed):
    n, epoch = 11, 4
    full = shares(n, replicas, drop_last=True, epoch=epoch)
    per_rank = consumed // replicas
    for rank in range(replicas):
        sampler = EpochSampler(n, num_replicas=replicas, rank=rank, seed=5)
        sampler.resume(epoch, consumed)
        assert len(sampler) == len(full[rank])  # Lightning's batch count of the epoch must not change
        assert [i for e, i in sampler if e == epoch] == full[rank][per_rank:]
        assert [i for _, i in sampler] == full[rank]  # the next pass is whole again


def test_resume_on_another_number_of_processes_repeats_nothing():
    n, consumed = 12, 5  # taken by one process
    taken = set(shares(n, 1, drop_last=True, epoch=2)[0][:consumed])
    rest = []
    for rank in range(2):
        sampler = EpochSampler(n, num_replicas=2, rank=rank, seed=5)
        sampler.resume(2, consumed)
        rest.append([i for _, i in sampler])
    assert len(rest[0]) == len(rest[1])
    assert not taken & {i for r in rest for i in r}
    assert max(Counter(i for r in rest for i in r).values()) == 1


def test_set_epoch_to_another_epoch_drops_the_resume_point():
    sampler = EpochSampler(6, seed=5)
    sampler.resume(1, 4)
    sampler.set_epoch(1)
    assert len(list(sampler)) == 2
    sampler.resume(1, 4)
    sampler.set_epoch(2)
    assert len(list(sampler)) == 6


class SliceRecorder(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, list[int]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch[Keys.SLICE]))
        return (self.weight - 1) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(root, max_steps: int, ckpt_path: str | None = None) -> list[tuple[int, list[int]]]:
    module = SliceRecorder()
    data = MultitaskDataModule(
        batch_size=2,
        num_workers=2,  # each prefetches 2 batches ahead of the loop
        train_slices="80:86",
        val_slices="100:101",
        samples_per_epoch=6,  # 3 batches per epoch
        augment=False,
        simulation=SimulationOptions(num_coils=1, size=(64, 64)),
    )
    checkpoint = lightning.pytorch.callbacks.ModelCheckpoint(
        dirpath=root, every_n_train_steps=1, save_last=True, save_top_k=-1
    )
    trainer = lightning.Trainer(
        max_steps=max_steps,
        limit_val_batches=0,
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module.seen


def test_a_resumed_fit_continues_the_epoch_where_the_checkpoint_left_it(tmp_path):
    whole = fit(tmp_path / "whole", max_steps=7)
    assert [e for e, _ in whole] == [0, 0, 0, 1, 1, 1, 2]
    first = fit(tmp_path / "part", max_steps=4)  # stops in the middle of epoch 1
    rest = fit(tmp_path / "part", max_steps=7, ckpt_path=str(tmp_path / "part" / "last.ckpt"))
    assert first + rest == whole
