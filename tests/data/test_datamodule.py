"""The online simulator dataset, its epoch sampler, and MultitaskDataModule over simulated data and files."""

from __future__ import annotations

import pytest
import torch

from medmtl.data.build import build_mni_dataset
from medmtl.data.datamodule import MultitaskDataModule, collate_samples
from medmtl.data.mni import SimulationOptions, split_slices
from medmtl.data.online import EpochSampler, SimulatedKSpaceDataset
from medmtl.errors import ConfigError
from medmtl.keys import Keys

SMALL = SimulationOptions(num_coils=2, size=(64, 72))
SAMPLE_KEYS = {
    Keys.KSPACE,
    Keys.MASK,
    Keys.TARGET,
    Keys.SEG,
    Keys.SENS,
    Keys.ACCELERATION,
    Keys.SCALE,
    Keys.FNAME,
    Keys.SLICE,
}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        else:
            assert a[key] == b[key]


def test_default_train_and_val_slices_are_disjoint():
    train = SimulatedKSpaceDataset("train", options=SMALL)
    val = SimulatedKSpaceDataset("val", options=SMALL)
    assert len(train) == len(split_slices("axial", "train")) and len(val) == len(split_slices("axial", "val"))
    assert not set(train.items) & set(val.items)
    assert train.augment and not val.augment


@pytest.mark.parametrize(
    "orientation, options, hw",
    [
        ("axial", SimulationOptions(num_coils=3), (197, 233)),
        ("sagittal", SimulationOptions(num_coils=1, size=(65, 64)), (65, 64)),
        ("coronal", SimulationOptions(num_coils=2, mask="poisson2d", size=(64, 81)), (64, 81)),
    ],
)
def test_sample_keys_shapes_dtypes(orientation, options, hw):
    ds = SimulatedKSpaceDataset("train", orientations=(orientation,), slices="100:102", options=options)
    sample = ds[1]
    assert set(sample) == SAMPLE_KEYS
    c, (h, w) = options.num_coils, hw
    assert sample[Keys.KSPACE].shape == sample[Keys.SENS].shape == (c, h, w, 2)
    hm = h if options.mask == "poisson2d" else 1
    assert sample[Keys.MASK].shape == (1, hm, w, 1)
    assert sample[Keys.TARGET].shape == sample[Keys.SEG].shape == (h, w)
    for key in (Keys.KSPACE, Keys.SENS, Keys.MASK, Keys.TARGET, Keys.SCALE, Keys.ACCELERATION):
        assert sample[key].dtype == torch.float32, key
    assert sample[Keys.SEG].dtype == torch.int64 and set(sample[Keys.SEG].unique().tolist()) <= {0, 1, 2}
    assert sample[Keys.FNAME] == f"mni_{orientation}.h5" and sample[Keys.SLICE] == 101
    # k-space is zero off the mask, and normalised: the target's 99.5th percentile is about 1.
    off = (sample[Keys.MASK] == 0).expand(c, h, w, 2)
    assert (sample[Keys.KSPACE][off] == 0).all()
    assert 0.5 < torch.quantile(sample[Keys.TARGET].flatten(), 0.995) < 2


def test_validation_is_deterministic_and_unaugmented():
    a = SimulatedKSpaceDataset("val", slices="80:83", options=SMALL, seed=4)
    b = SimulatedKSpaceDataset("val", slices="80:83", options=SMALL, seed=4)
    assert not a.augment
    assert_same(a[2], b[2])
    assert_same(a[(5, 2)], a[2])  # the epoch does not matter for validation
    assert not torch.equal(a[1][Keys.SENS], a[2][Keys.SENS])


def test_training_draws_depend_on_seed_epoch_and_index():
    def make(seed: int) -> SimulatedKSpaceDataset:
        return SimulatedKSpaceDataset("train", slices="80:82", options=SMALL, seed=seed, samples_per_epoch=6)

    ds = make(1)
    assert len(ds) == 6 and [ds[i][Keys.SLICE] for i in range(3)] == [80, 81, 80]
    assert_same(ds[(3, 4)], make(1)[(3, 4)])  # reproducible from (seed, epoch, index) alone
    base = ds[(0, 0)][Keys.SENS]
    for other in (ds[(1, 0)], ds[(0, 2)], make(2)[(0, 0)]):  # next epoch, same slice at another index, seed
        assert not torch.equal(other[Keys.SENS], base)


def test_dataset_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="split"):
        SimulatedKSpaceDataset("test", options=SMALL)
    with pytest.raises(ConfigError, match="orientations"):
        SimulatedKSpaceDataset("train", orientations=("oblique",), options=SMALL)
    with pytest.raises(ConfigError, match="samples_per_epoch"):
        SimulatedKSpaceDataset("train", slices="80:81", options=SMALL, samples_per_epoch=0)
    with pytest.raises(ConfigError, match="centre fraction"):  # caught at construction, not in a worker
        SimulatedKSpaceDataset("train", slices="80:81", options=SimulationOptions(center_fractions=(0.5,)))
    with pytest.raises(IndexError):
        SimulatedKSpaceDataset("val", slices="80:81", options=SMALL)[1]
    with pytest.raises(ConfigError, match="crop"):
        SimulatedKSpaceDataset("train", slices="80:81", options=SMALL, crop=(65, 32))


def test_training_crop_moves_and_keeps_pairs():
    """A random window per draw, the same window in image, label and target; validation keeps whole slices."""
    data = SimulatedKSpaceDataset("train", slices="90:91", options=SMALL, crop=(33, 40), samples_per_epoch=6)
    samples = [data[(0, i)] for i in range(6)]
    assert all(s[Keys.KSPACE].shape == (2, 33, 40, 2) and s[Keys.SEG].shape == (33, 40) for s in samples)
    assert all(s[Keys.TARGET].shape == (33, 40) for s in samples)
    assert len({s[Keys.TARGET].sum().item() for s in samples}) > 1  # the window moves
    module = MultitaskDataModule(simulation=SMALL, train_crop=(33, 40), train_slices="90:91", val_slices="80:81")
    module.setup("fit")
    assert module.datasets["val"][0][Keys.TARGET].shape == (64, 72)


def test_epoch_sampler():
    sampler = EpochSampler(5, shuffle=True, seed=3)
    first = list(sampler)
    assert (
        len(sampler) == 5 and {e for e, _ in first} == {0} and sorted(i for _, i in first) == list(range(5))
    )
    sampler.set_epoch(2)
    second = list(sampler)
    assert {e for e, _ in second} == {2} and [i for _, i in second] != [i for _, i in first]
    assert [i for _, i in EpochSampler(4, shuffle=False)] == [0, 1, 2, 3]


def small_module(**kwargs) -> MultitaskDataModule:
    defaults = dict(
        batch_size=3, train_slices="80:84", val_slices="100:103", simulation=SMALL, samples_per_epoch=6
    )
    return MultitaskDataModule(**{**defaults, **kwargs})


def test_datamodule_simulated_batch():
    dm = small_module()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch[Keys.KSPACE].shape == (3, 2, 64, 72, 2)
    assert batch[Keys.MASK].shape == (3, 1, 1, 72, 1)
    assert batch[Keys.TARGET].shape == batch[Keys.SEG].shape == (3, 64, 72)
    assert batch[Keys.SCALE].shape == batch[Keys.ACCELERATION].shape == (3,)
    assert batch[Keys.FNAME] == ["mni_axial.h5"] * 3
    assert isinstance(batch[Keys.SLICE], list) and all(isinstance(s, int) for s in batch[Keys.SLICE])
    val = next(iter(dm.val_dataloader()))
    assert val[Keys.SLICE] == [100, 101, 102]


def test_datamodule_two_workers_match_one_process_and_change_per_epoch():
    """Draws depend on (seed, epoch, index) only, so worker processes reproduce the in-process batches."""
    loaders = [small_module(num_workers=n).train_dataloader() for n in (0, 2)]
    for loader in loaders:
        loader.sampler.set_epoch(1)  # what Lightning does before each epoch
    batches = [list(loader) for loader in loaders]
    assert len(batches[1]) == 2
    for a, b in zip(*batches):
        assert_same(a, b)
    loaders[1].sampler.set_epoch(2)
    next_epoch = next(iter(loaders[1]))
    assert not torch.equal(next_epoch[Keys.KSPACE], batches[1][0][Keys.KSPACE])


def test_datamodule_rejects_overlap_and_missing_folders():
    with pytest.raises(ConfigError, match="val_slices"):
        small_module(train_slices="80:90", val_slices="89:95")
    with pytest.raises(ConfigError, match="test_dir"):
        small_module().test_dataloader()
    with pytest.raises(ConfigError, match="batch_size"):
        small_module(batch_size=0)


def test_collate_reports_mixed_shapes():
    samples = [{Keys.TARGET: torch.zeros(4, 5)}, {Keys.TARGET: torch.zeros(4, 6)}]
    with pytest.raises(ConfigError, match="batch_size=1"):
        collate_samples(samples)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("mni")
    options = SimulationOptions(num_coils=2, size=(64, 64))
    build_mni_dataset(out / "train", slices="80:83", options=options, seed=1, show_progress=False)
    build_mni_dataset(out / "val", slices="100:102", options=options, seed=1, show_progress=False)
    return out


@pytest.mark.parametrize("remask", [False, True])
def test_datamodule_reads_folders(built, remask):
    dm = MultitaskDataModule(
        train_dir=str(built / "train"),
        val_dir=str(built / "val"),
        test_dir=str(built / "val"),
        batch_size=2,
        remask_files=remask,
        simulation=SimulationOptions(accelerations=(8,), center_fractions=(0.04,)),
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch[Keys.KSPACE].shape == (2, 2, 64, 64, 2) and batch[Keys.FNAME] == ["mni_axial.h5"] * 2
    assert batch[Keys.SCALE].shape == (2,)
    test = next(iter(dm.test_dataloader()))
    assert test[Keys.SLICE] == [0, 1]
    sampled = float(test[Keys.MASK][0].mean())
    assert sampled == pytest.approx(1 / 8 if remask else 1 / 4, rel=0.1)


def test_datamodule_predicts_from_files_without_target(fastmri_test_h5):
    batch = next(
        iter(MultitaskDataModule(predict_dir=str(fastmri_test_h5), batch_size=2).predict_dataloader())
    )
    assert Keys.TARGET not in batch and batch[Keys.KSPACE].shape == (2, 4, 32, 22, 2)
    assert batch[Keys.FNAME] == [fastmri_test_h5.name] * 2


def test_datamodule_builds_from_yaml():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(MultitaskDataModule, "data")
    cfg = parser.parse_string(
        "data:\n  batch_size: 2\n  orientations: [coronal]\n"
        "  simulation: {num_coils: 4, accelerations: [4, 8], center_fractions: [0.08, 0.04], size: [96, 96]}\n"
    )
    dm = parser.instantiate(cfg).data
    assert isinstance(dm, MultitaskDataModule) and dm.orientations == ("coronal",)
    assert dm.simulation == SimulationOptions(
        num_coils=4, accelerations=(4, 8), center_fractions=(0.08, 0.04), size=(96, 96)
    )


def test_lightning_gives_fresh_draws_every_epoch():
    lightning = pytest.importorskip("lightning")

    class Probe(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.seen: list[tuple[int, list[int], torch.Tensor]] = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch[Keys.SLICE], batch[Keys.KSPACE]))
            return (self.weight - 1) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    probe = Probe()
    trainer = lightning.Trainer(
        max_epochs=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(probe, small_module(samples_per_epoch=3, train_slices="80:81"))
    (e0, s0, k0), (e1, s1, k1) = probe.seen
    assert (e0, e1) == (0, 1) and s0 == s1 == [80, 80, 80]
    assert not torch.equal(k0, k1)
