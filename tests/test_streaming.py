"""Streaming data mode: same samples and split as in memory, shard specs (braces, pipe:, fsspec URLs),
corrupt shards, the per-epoch plan (equal steps per rank, each sample once) and exact mid-epoch resume."""
import itertools
from collections import Counter

import pytest
import pytorch_lightning as pl
import torch
from production import Recording, planned_steps, production_trainer, write_uneven_shards
from synthetic_shards import write_damaged_shards, write_synthetic_shards

from predictor.config import PredictorConfig

from predictor.model import RelevancePredictor
from predictor.schema import SampleError
from predictor.training import ShardDataModule
from predictor.training.data import make_datamodule
from predictor.training.epochs import plan_epoch, worker_skips
from predictor.training.streaming import StreamingDataModule

INPUTS = ["attn", "attn_heads", "coords"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_synthetic_shards(out, 157, grids=[(1, 6, 6), (1, 8, 8)], samples_per_shard=50, num_heads=2)
    return out  # synthetic-000000..000003.tar: 50, 50, 50, 7 samples


def _keys(loader) -> list[str]:
    return [k for b in loader for k in b["keys"]]


def _streaming(spec, **kw) -> StreamingDataModule:
    dm = StreamingDataModule(spec, INPUTS, **{"batch_size": 16, "val_fraction": 0.2, "buffer": 20, **kw})
    dm.setup()
    return dm


@pytest.mark.parametrize("workers", [0, 2])
def test_same_samples_and_split_as_in_memory(shards, workers):
    mem = ShardDataModule(str(shards), INPUTS, batch_size=16, val_fraction=0.2)
    mem.setup()
    dm = _streaming(str(shards / "synthetic-{000000..000003}.tar"), num_workers=workers)
    assert dm.summary == mem.summary and dm.num_heads == 2
    figures, want = dm.figure_batch(), mem.figure_batch()  # what the figure callback draws, questions included
    assert set(figures) == set(want) and figures["instructions"] == ["where is the object?"] * len(figures["keys"])
    train = list(dm.train_dataloader())
    assert len(train) == len(dm.train_dataloader()) and all(0 < len(b["keys"]) <= 16 for b in train)
    keys = [k for b in train for k in b["keys"]]
    assert sorted(keys) == sorted(it.key for it in mem.train_set.items)  # each once, none missing
    assert sorted(_keys(dm.val_dataloader())) == sorted(it.key for it in mem.val_set.items)
    by_key = {it.key: it for it in mem.train_set.items}
    for b in train[:2]:  # the same decoded inputs, padded the same way
        for i, k in enumerate(b["keys"]):
            n = by_key[k].x.shape[1]
            assert torch.equal(b["x"][i, :, :n], by_key[k].x) and not b["mask"][i, n:].any()
            assert torch.equal(b["relevance"][i, :n], by_key[k].relevance)


def test_brace_pipe_and_fsspec_urls_stream_the_same_samples(shards):
    import fsspec

    want = sorted(_keys(_streaming(str(shards)).train_dataloader()))
    piped = _streaming(f"pipe:cat {shards}/synthetic-{{000000..000003}}.tar")
    assert sorted(_keys(piped.train_dataloader())) == want
    fs = fsspec.filesystem("memory")
    for p in sorted(shards.glob("*.tar")):
        fs.pipe(f"/stream-test/{p.name}", p.read_bytes())
    mem = _streaming("memory://stream-test/synthetic-{000000..000003}.tar")
    assert sorted(_keys(mem.train_dataloader())) == want
    with pytest.raises(FileNotFoundError, match="6 missing shard.*synthetic-000004.tar"):
        _streaming(str(shards / "synthetic-{000000..000009}.tar"))


def test_mode_choice(shards, capsys):
    kw = {"batch_size": 16}
    assert not make_datamodule(str(shards), ["attn"], **kw).streaming
    assert "decoded into memory" in capsys.readouterr().out
    assert make_datamodule(str(shards), ["attn"], stream_above_gb=1e-6, **kw).streaming
    assert "> data.stream_above_gb=1e-06" in capsys.readouterr().out
    assert make_datamodule(f"pipe:cat {shards}/synthetic-000000.tar", ["attn"], **kw).streaming
    with pytest.raises(ValueError, match="data.streaming=true"):
        make_datamodule(f"pipe:cat {shards}/synthetic-000000.tar", ["attn"], streaming=False, **kw)


def test_val_shards_hold_out_whole_shards(shards):
    dm = _streaming(str(shards), val_shards=str(shards / "synthetic-000003.tar"))
    assert (dm.summary["num_train"], dm.summary["num_val"]) == (150, 7)
    assert sorted(_keys(dm.val_dataloader())) == [f"synthetic0_{i:07d}" for i in range(150, 157)]
    assert len(set(_keys(dm.train_dataloader()))) == 150


def test_corrupt_shard_and_sample_in_a_stream(tmp_path):
    write_damaged_shards(tmp_path)
    spec = f"pipe:cat {tmp_path}/{{a,b,c}}.tar"  # a stream: no seeking, no size check

    dm = StreamingDataModule(spec, ["attn"], batch_size=4, val_fraction=0.0)
    dm.setup()
    assert dm.summary["corrupt_shards"] == 1 and "c.tar" in next(iter(dm.corrupt))
    keys = []
    for b in dm.train_dataloader():
        keys += dm.on_before_batch_transfer(b, 0)["keys"]
    assert sorted(keys) == sorted(f"good{i}" for i in range(15))  # b.tar's bad sample alone is dropped
    assert dm.summary["skipped_samples"] == 1 and "badsample" in next(iter(dm.skipped))

    with pytest.raises(ValueError, match=r"c\.tar is corrupt"):
        StreamingDataModule(spec, ["attn"], strict=True).setup()
    strict = StreamingDataModule(f"pipe:cat {tmp_path}/{{a,b}}.tar", ["attn"], val_fraction=0.0, strict=True)
    strict.setup()
    with pytest.raises(SampleError, match="badsample.*rel.npy"):
        list(strict.train_dataloader())


@pytest.mark.parametrize("counts,world,workers,bs", [
    ([50, 50, 50, 7], 2, 1, 16), ([50, 50, 50, 7], 3, 2, 8), ([5, 300, 1, 1, 40], 2, 2, 32),
    ([3, 3], 2, 1, 16), ([10] * 7, 4, 3, 4), ([1, 100], 2, 1, 4)])
def test_plan_equal_steps_each_sample_once(counts, world, workers, bs):
    for epoch in range(3):
        plan = plan_epoch(counts, epoch, seed=1, world=world, workers=workers, batch_size=bs, train=True)
        steps = {sum(len(sizes) for _, sizes in rank) for rank in plan}
        assert len(steps) == 1  # DDP would hang otherwise
        dealt = [i for rank in plan for shards, _ in rank for i in shards]
        assert sorted(dealt) == [i for i, c in enumerate(counts) if c]  # every shard to one rank and worker
        for rank in plan:
            n = sum(counts[i] for shards, _ in rank for i in shards)
            sizes = [s for _, ss in rank for s in ss]
            assert all(0 < s <= bs for s in sizes)
            if n >= len(sizes):  # enough samples: each once, none repeated
                assert sum(sizes) == n
    orders = {tuple(i for r in plan_epoch(counts, e, 1, world, workers, bs, True) for s, _ in r for i in s)
              for e in range(6)}
    assert len(counts) < 3 or len(orders) > 1  # shards are dealt differently per epoch


def test_worker_skips_follow_the_loader_round_robin():
    order = [w for group in itertools.zip_longest(*[[w] * n for w, n in enumerate([3, 1, 2])]) for w in group
             if w is not None]
    for done in range(7):
        skips, nxt = worker_skips([3, 1, 2], done)
        assert skips == [Counter(order[:done])[w] for w in range(3)]
        assert done == 6 or nxt == order[done] or skips[nxt] == [3, 1, 2][nxt]  # next in turn, or finished


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_continues_with_the_same_batches(shards, workers):
    dm = _streaming(str(shards), num_workers=workers)
    full = [b["keys"] for b in dm.train_dataloader()]
    dm.load_state_dict({"epoch": 0, "batches": 3})
    loader = dm.train_dataloader()
    assert [b["keys"] for b in loader] == full[3:]
    assert [b["keys"] for b in loader] == full  # the skip is for the resumed epoch only
    dm.load_state_dict({"epoch": 5, "batches": 3})  # a checkpoint of another epoch skips nothing
    assert len(list(dm.train_dataloader())) == len(full)


@pytest.fixture(scope="module")
def filtered_shards(tmp_path_factory):
    """{"modality": image and video samples mixed in each shard, "undecodable": every 5th sample's relevance
    NaN}: samples the index counts or reads but training drops."""
    out = tmp_path_factory.mktemp("filtered")
    write_synthetic_shards(out / "modality", 120, grids=[(1, 4, 4), (2, 4, 4)], samples_per_shard=40)
    write_synthetic_shards(out / "undecodable", 120, grids=[(1, 4, 4)], samples_per_shard=40, invalid_every=5)
    return out


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("drop", ["modality", "undecodable"])
def test_resume_mid_epoch_is_exact_with_filtered_samples(filtered_shards, drop, workers):
    modality = "image" if drop == "modality" else None
    mem = ShardDataModule(str(filtered_shards / drop), ["attn"], val_fraction=0.2, modality=modality)
    mem.setup()
    dm = StreamingDataModule(str(filtered_shards / drop), ["attn"], batch_size=8, val_fraction=0.2, buffer=20,
                             num_workers=workers, modality=modality)
    dm.setup()
    full = [b["keys"] for b in dm.train_dataloader()]
    assert sorted(k for b in full for k in b) == sorted(it.key for it in mem.train_set.items)
    for done in (3, 6):
        dm.load_state_dict({"epoch": 0, "batches": done})
        assert [b["keys"] for b in dm.train_dataloader()] == full[done:], done  # none twice, none left out


def _fit(dm, tmp_path, ckpt=None, callbacks=(), epochs=2) -> list[tuple[str, int, list[str]]]:
    """(split, epoch, keys) of every batch of a fit with train.py's Trainer."""
    module = Recording(RelevancePredictor(PredictorConfig(widths=[8], inputs=["attn"])))
    trainer = production_trainer(dm, callbacks, tmp_path, max_epochs=epochs, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    return module.seen


def test_each_sample_trained_once_per_epoch_as_batch_counts_change(tmp_path):
    # one rank, 2 loader workers (the multi-rank case: tests/test_ddp.py)
    write_uneven_shards(tmp_path / "shards")
    dm = StreamingDataModule(str(tmp_path / "shards"), ["attn"], batch_size=16, val_fraction=0.0, buffer=20,
                             num_workers=2)
    dm.setup()
    steps = planned_steps(dm, world=1, workers=2, epochs=6)
    assert max(steps) > steps[0], steps  # the case in point: an epoch takes more batches than the first
    seen = _fit(dm, tmp_path, epochs=6)
    mem = ShardDataModule(str(tmp_path / "shards"), ["attn"], val_fraction=0.0)
    mem.setup()
    every = sorted(it.key for it in mem.train_set.items)
    orders = [[k for s, e, ks in seen if s == "train" and e == epoch for k in ks] for epoch in range(6)]
    for epoch, keys in enumerate(orders):
        assert sorted(keys) == every, (epoch, len(keys), len(set(keys)))  # each once, none left out
    assert len({tuple(keys) for keys in orders}) == 6  # reshuffled per epoch


def test_lightning_resume_from_a_mid_epoch_checkpoint(shards, tmp_path):
    def dm():
        d = StreamingDataModule(str(shards), ["attn"], batch_size=16, val_fraction=0.2, buffer=20)
        d.setup()
        return d

    full = _fit(dm(), tmp_path / "a")
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ck"), every_n_train_steps=3, save_top_k=-1,
                                        filename="{step}")
    _fit(dm(), tmp_path / "b", callbacks=[ckpt])
    resumed = _fit(dm(), tmp_path / "c", ckpt=str(tmp_path / "ck" / "step=3.ckpt"))
    assert resumed == full[3:]  # the rest of epoch 0 (no batch repeated), then epoch 1 as unbroken


def test_modality_filter_and_no_validation_as_in_memory(tmp_path):
    # data.modality on mixed shards: the summary is of the kept samples (an export of it must save);
    # val_fraction 0 with per-head input: the head count still comes from the shards
    write_synthetic_shards(tmp_path, 12, grids=[(1, 4, 4)], prefix="img", seed=0, num_heads=2)
    write_synthetic_shards(tmp_path, 8, grids=[(2, 4, 4)], prefix="vid", seed=1, num_heads=2)
    for modality, val_fraction in (("image", 0.2), ("video", 0.0)):
        mem = ShardDataModule(str(tmp_path), INPUTS, batch_size=4, val_fraction=val_fraction, modality=modality)
        mem.setup()
        dm = _streaming(str(tmp_path), modality=modality, val_fraction=val_fraction)
        assert dm.summary == mem.summary and dm.summary["modality"] == modality and dm.num_heads == 2
