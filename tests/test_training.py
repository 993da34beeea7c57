"""Training pipeline on real (planted-pattern) shards written through the schema."""
import re
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from synthetic_shards import write_damaged_shards, write_synthetic_shards

from predictor import load_predictor
from predictor.export import read_export_config
from predictor.config import PredictorConfig
from predictor.model import RelevancePredictor
from predictor.schema import SampleError
from predictor.training import EvenBatchSampler, PredictorModule, ShardDataModule, collate, is_val_key

SMALL = [16, 32, 64]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_synthetic_shards(out, 900, grids=[(1, 8, 8), (1, 6, 10), (1, 10, 10)], samples_per_shard=300, num_heads=2)
    return out


@pytest.mark.parametrize("n,world,bs", [(10, 1, 4), (101, 2, 16), (100, 2, 25), (51, 2, 25), (7, 3, 2), (3, 3, 8)])
def test_even_batch_sampler_each_index_once(n, world, bs):
    seen = []
    counts = set()
    for rank in range(world):
        s = EvenBatchSampler(n, bs, shuffle=True, seed=1, rank=rank, world_size=world)
        s.set_epoch(3)
        batches = list(s)
        assert len(batches) == len(s) and all(0 < len(b) <= bs for b in batches)
        counts.add(len(batches))
        seen += [i for b in batches for i in b]
    assert sorted(seen) == list(range(n))  # once each, none dropped, none repeated
    assert len(counts) == 1  # every rank steps the same number of times (DDP would hang otherwise)
    a = [i for b in EvenBatchSampler(n, bs, True, 1, 0, world) for i in b]
    s = EvenBatchSampler(n, bs, True, 1, 0, world)
    s.set_epoch(1)
    assert n < 8 or a != [i for b in s for i in b]  # reshuffled per epoch
    with pytest.raises(ValueError, match="ranks"):
        EvenBatchSampler(1, 4, True, world_size=2)


def test_split_is_by_key_and_stable(shards):
    dm = ShardDataModule(str(shards), ["attn"], batch_size=32, val_fraction=0.2)
    dm.setup()
    train_keys = {it.key for it in dm.train_set.items}
    val_keys = {it.key for it in dm.val_set.items}
    assert not train_keys & val_keys and len(train_keys) + len(val_keys) == 900
    assert 0.13 < len(val_keys) / 900 < 0.27
    assert all(is_val_key(k, 0.2) for k in val_keys)
    # a list of shards in another order gives the same split
    dm2 = ShardDataModule(sorted(str(p) for p in shards.glob("*.tar"))[::-1], ["attn"], val_fraction=0.2)
    dm2.setup()
    assert {it.key for it in dm2.val_set.items} == val_keys
    s = dm.summary
    assert s["model_id"] == "synthetic/planted" and s["n_v_min"] == 60 and s["n_v_max"] == 100
    assert s["num_train"] == len(train_keys) and s["num_shards"] == 3
    # the recorded fraction reproduces the held-out keys (eval.py's fidelity relies on it)
    all_keys = train_keys | val_keys
    assert {k for k in all_keys if is_val_key(k, s["val_fraction"])} == val_keys


def test_collate_pads_with_masks(shards):
    dm = ShardDataModule(str(shards), ["attn", "coords"], val_fraction=0.1)
    dm.setup()
    items = sorted(dm.train_set.items, key=lambda it: it.x.shape[1])[:: len(dm.train_set.items) // 3][:3]
    b = collate(items)
    lens = [it.x.shape[1] for it in items]
    assert b["x"].shape == (3, 4, max(lens)) and b["mask"].sum(-1).tolist() == lens
    assert (b["x"][~b["mask"][:, None].expand_as(b["x"])] == 0).all()
    assert [int(torch.tensor(g).prod()) for g in b["grid"].tolist()] == lens


def test_missing_shards_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m data_gen out=.*nothing"):
        ShardDataModule(str(tmp_path / "nothing"), ["attn"]).setup()


def test_corrupt_shard_and_sample_skipped_or_strict(tmp_path):
    write_damaged_shards(tmp_path)
    dm = ShardDataModule(str(tmp_path), ["attn"], val_fraction=0.0)
    dm.setup()
    assert len(dm.train_set) == 15  # a.tar + the 5 good samples of b.tar; c.tar dropped whole
    assert dm.stats.skipped_samples == 1 and len(dm.stats.corrupt_shards) == 1
    assert "c.tar" in dm.stats.corrupt_shards[0]
    assert dm.summary["skipped_samples"] == 1 and dm.summary["corrupt_shards"] == 1

    with pytest.raises(SampleError) as err:
        ShardDataModule([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")], ["attn"], strict=True).setup()
    assert "badsample" in str(err.value) and "b.tar" in str(err.value) and "rel.npy" in str(err.value)
    with pytest.raises(ValueError, match=r"c\.tar is corrupt"):
        ShardDataModule(str(tmp_path / "c.tar"), ["attn"], strict=True).setup()


def test_learns_planted_pattern(shards, tmp_path):
    torch.manual_seed(0)
    dm = ShardDataModule(str(shards), ["attn", "coords"], batch_size=32, val_fraction=0.15)
    module = PredictorModule(RelevancePredictor(PredictorConfig(widths=SMALL, inputs=["attn", "coords"])),
                             lr=3e-3, trained_on={"model_id": "synthetic/planted"})
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    m = module.last_val_metrics
    assert m["chance_recall@25"] == pytest.approx(0.25, abs=0.01)
    assert m["recall@25"] > 0.5, m  # clearly above chance (0.25) ...
    assert m["recall@25"] > m["attn_recall@25"] + 0.1, m  # ... and above layer-0 attention used directly
    assert m["kl"] < m["attn_kl"]


@pytest.mark.parametrize("arch,inputs", [("conv2d", ["attn"]), ("conv1d", ["attn", "coords"])])
def test_module_steps_with_grid_variants(shards, arch, inputs):
    """The grid reaches the model: conv2d and coords inputs train and validate on padded batches."""
    dm = ShardDataModule(str(shards), inputs, batch_size=16, val_fraction=0.2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask"].sum(-1).unique().numel() > 1  # mixed N_v in one batch
    module = PredictorModule(RelevancePredictor(PredictorConfig(arch=arch, widths=[8, 16], kernel_size=3,
                                                                inputs=inputs)))
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in module.parameters())
    pred = module(batch)
    assert (pred[~batch["mask"]] == 0).all()
    torch.testing.assert_close(pred.sum(-1), torch.ones(len(batch["keys"])))


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "conf" / "train"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_train_resume_and_export_from_checkpoint(shards, tmp_path):
    from predictor.training.train import train

    common = [f"data.shards={shards}", "model.widths=[8,16]", "logger=none", "data.batch_size=64",
              "callbacks.figures.every_n_epochs=1", "trainer.enable_progress_bar=false"]
    out = train(_compose(*common, "trainer.max_epochs=1", f"run_dir={tmp_path}/run1", f"export_dir={tmp_path}/exp1"))
    assert out == (tmp_path / "exp1").resolve()
    cfg = read_export_config(out)
    assert cfg["trained_on"]["model_id"] == "synthetic/planted" and cfg["trained_on"]["num_samples"] == 900
    assert cfg["trained_on"]["n_v_min"] == 60 and cfg["trained_on"]["n_v_max"] == 100
    assert {"recall@25", "kl", "spearman", "chance_recall@25"} <= set(cfg["metrics"])
    assert cfg["training"]["target_keep"] == 0.5 and cfg["training"]["optimizer"] == "adam"
    # the default predictor reads the mean, every head and the coordinates; H comes from the shards
    assert cfg["predictor"]["inputs"] == ["attn", "attn_heads", "coords"] and cfg["predictor"]["num_heads"] == 2
    figures = {p.stem for p in (tmp_path / "run1" / "figures").glob("*.png")}
    assert len(figures) == 4 and all(re.fullmatch(r"synthetic\d+_\d{7}", k) for k in figures), figures  # by key
    last = tmp_path / "run1" / "checkpoints" / "last.ckpt"
    assert last.is_file()

    # resume: continues from epoch 1 to 2 (the checkpoint's optimizer and loop state are restored)
    train(_compose(*common, "trainer.max_epochs=2", f"ckpt_path={last}", f"run_dir={tmp_path}/run2",
                   f"export_dir={tmp_path}/exp2"))
    assert read_export_config(tmp_path / "exp2")["training"]["epochs"] == 2
    ckpt1 = torch.load(last, weights_only=True)
    ckpt2 = torch.load(tmp_path / "run2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt2["epoch"] == 1 and ckpt2["global_step"] == 2 * ckpt1["global_step"] > 0

    # export on demand from a checkpoint: same weights as the end-of-run export
    exp3 = train(_compose(*common, f"export_from={tmp_path}/run2/checkpoints/last.ckpt", f"export_dir={tmp_path}/exp3"))
    a, b = load_predictor(tmp_path / "exp2"), load_predictor(exp3)
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert read_export_config(exp3)["metrics"] == read_export_config(tmp_path / "exp2")["metrics"]
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        train(_compose(*common, f"export_from={tmp_path}/nope.ckpt"))


def test_per_head_input_refuses_shards_without_heads_or_with_other_counts(shards, tmp_path):
    from predictor.training.train import train

    bare = tmp_path / "bare"
    write_synthetic_shards(bare, 20, grids=[(1, 8, 8)], samples_per_shard=20)  # no per-head attention
    common = ["model.widths=[8,16]", "logger=none", f"run_dir={tmp_path}/run", f"export_dir={tmp_path}/exp"]
    with pytest.raises(ValueError, match="save_heads=true"):
        train(_compose(*common, f"data.shards={bare}"))
    with pytest.raises(ValueError, match="model.num_heads=3 but the shards .* 2 heads"):
        train(_compose(*common, f"data.shards={shards}", "model.num_heads=3"))
    assert not (tmp_path / "exp").exists()
    out = train(_compose(*common, f"data.shards={bare}", "model=conv1d", "model.widths=[8,16]",
                         "trainer.max_epochs=1", "trainer.enable_progress_bar=false"))
    assert read_export_config(out)["predictor"]["inputs"] == ["attn"]  # the mean-only net needs no heads


def test_temporal_clip_ground_truth(tmp_path):
    """The object's frames carry the relevance; layer 0 sees the drifting distractor in every frame as strongly."""
    from synthetic_shards import planted_clip

    s = planted_clip("k", (8, 6, 6), np.random.default_rng(0))
    assert s.meta["modality"] == "video" and s.meta["grid"] == [8, 6, 6]
    rel, attn = s.relevance.reshape(8, 36), s.attn.reshape(8, 36)
    with_object = (rel.max(-1).values > 0.5).nonzero().flatten().tolist()
    assert len(with_object) == 2 and with_object[1] == with_object[0] + 1  # t // 4 consecutive frames
    assert rel.sum(-1)[[f for f in range(8) if f not in with_object]].max() < 0.5  # noise elsewhere
    torch.testing.assert_close(s.attn.sum(), torch.tensor(1.0))
    assert (attn.max(-1).values > 1.4 * attn.mean(-1)).all()  # a peak in every frame: the distractor
    paths = write_synthetic_shards(tmp_path, 6, grids=[(4, 4, 4)], temporal=True)
    dm = ShardDataModule([str(p) for p in paths], ["attn"], val_fraction=0.0)
    dm.setup()
    assert dm.summary["modality"] == "video" and {it.grid for it in dm.train_set.items} == {(4, 4, 4)}
    with pytest.raises(ValueError, match=r"temporal=True needs video grids.*\(1, 8, 8\)"):
        write_synthetic_shards(tmp_path / "x", 2, grids=[(1, 8, 8)], temporal=True)


def test_same_seed_same_shards_same_thread_count_give_byte_identical_weights(shards, tmp_path):
    # docs/export.md, "Reproducibility": the export's weights depend on seed, shards, torch and the thread count only
    from predictor.training.train import train

    torch.set_num_threads(2)  # the CI machine's count; intra-op reductions must not make the bytes vary
    common = [f"data.shards={shards}", "model.widths=[8,16]", "logger=none", "data.batch_size=64",
              "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    a = train(_compose(*common, f"run_dir={tmp_path}/ra", f"export_dir={tmp_path}/a"))
    b = train(_compose(*common, f"run_dir={tmp_path}/rb", f"export_dir={tmp_path}/b"))
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()
    rec = read_export_config(a)["training"]
    assert rec["seed"] == 0 and rec["threads"] == 2 and rec["torch"] == torch.__version__.split("+")[0]
    c = train(_compose(*common, "seed=1", f"run_dir={tmp_path}/rc", f"export_dir={tmp_path}/c"))
    assert (c / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()  # the seed matters


def test_export_records_the_labeller_beside_the_shards(tmp_path):
    # what made the labels (the MLLM's weight fingerprint, the explainer) travels into the export
    import json

    from predictor.training.train import train

    write_synthetic_shards(tmp_path / "s", 40, grids=[(1, 8, 8)], samples_per_shard=20, num_heads=2)
    labeller = {"adapter": "qwen2_vl", "model_fingerprint": "f98df96ba2ef6318", "explainer": {"name": "gae"}}
    (tmp_path / "s" / "labeller.json").write_text(json.dumps(labeller))
    out = train(_compose(f"data.shards={tmp_path / 's'}", "model.widths=[8,16]", "logger=none", "trainer.max_epochs=1",
                         "trainer.enable_progress_bar=false", f"run_dir={tmp_path}/r", f"export_dir={tmp_path}/e"))
    trained_on = read_export_config(out)["trained_on"]
    assert trained_on["labeller"] == labeller
    # and the libraries the training ran with, shown on the card beside the labeller's (here: none recorded)
    assert trained_on["versions"]["torch"] == torch.__version__.split("+")[0]
    assert trained_on["versions"]["relevance-predictor"] == "0.1.0"
    card = (out / "README.md").read_text()
    assert f"| training (python train.py) | {trained_on['versions']['torch']} |" in card
    assert "| labels (python -m data_gen) | not recorded |" in card


def test_fidelity_after_training_with_val_shards_scores_those_shards_only(tmp_path):
    # with data.val_shards the held-out samples are whole shards: the export must say so, and eval's
    # fidelity check must score them, not a key-hash split of the training shards (in-sample)
    from predictor.training.train import train

    write_synthetic_shards(tmp_path / "train", 60, grids=[(1, 8, 8)], samples_per_shard=30, num_heads=2)
    write_synthetic_shards(tmp_path / "val", 12, grids=[(1, 8, 8)], samples_per_shard=12, num_heads=2, seed=7)
    out = train(_compose(f"data.shards={tmp_path / 'train'}", f"data.val_shards={tmp_path / 'val'}",
                         "model.widths=[8,16]", "logger=none", "trainer.max_epochs=1", "data.batch_size=16",
                         "trainer.enable_progress_bar=false", f"run_dir={tmp_path}/r", f"export_dir={tmp_path}/e"))
    cfg = read_export_config(out)
    t = cfg["trained_on"]
    assert t["val_shards"] == str(tmp_path / "val") and t["shards"] == str(tmp_path / "train")
    assert t["val_fraction"] is None  # no key-hash split was made
    from evaluation.fidelity import fidelity, held_out

    h = held_out(cfg, {"shards": None, "val_only": True}, str(out))  # eval's default: what the export records
    assert h.shards == str(tmp_path / "val") and h.val_fraction is None
    assert fidelity(load_predictor(out), h.shards, h.val_fraction, progress=False)["predictor"]["n"] == 12
    with pytest.raises(ValueError, match="data.val_shards=.* held out whole"):  # a key-hash split of other shards
        held_out(cfg, {"shards": str(tmp_path / "train"), "val_only": True}, str(out))


def test_training_on_other_shards_never_replaces_the_shipped_export(tmp_path, monkeypatch):
    # the main command (no overrides) rewrites checkpoints/predictor-reference; training on one's own shards,
    # with export_dir left at its default, exports into the run dir instead. Here in a copy of the layout.
    from predictor.training.train import train

    monkeypatch.chdir(tmp_path)
    write_synthetic_shards(tmp_path / "mine", 40, grids=[(1, 8, 8)], samples_per_shard=40, num_heads=2)
    quick = ["model.widths=[8,16]", "logger=none", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    out = train(_compose(f"data.shards={tmp_path / 'mine'}", *quick, f"run_dir={tmp_path}/run"))
    assert out == (tmp_path / "run" / "export").resolve() and (out / "config.json").is_file()
    assert not (tmp_path / "checkpoints").exists()
    write_synthetic_shards(tmp_path / "data" / "shards" / "reference", 40, grids=[(1, 8, 8)], samples_per_shard=40,
                           num_heads=2)
    out = train(_compose(*quick, f"run_dir={tmp_path}/run2"))  # data.shards at its default
    assert out == (tmp_path / "checkpoints" / "predictor-reference").resolve() and (out / "config.json").is_file()


def test_multi_image_samples_train_image_by_image():
    """A sample with two images (meta.segments "visual"): features normalised over all its tokens, coordinates
    per image, the net convolves each image on its own grid, one softmax over the sample; a one-image sample
    in the same batch is scored as before."""
    from predictor.features import build_features
    from predictor.schema import Sample, make_meta
    from predictor.training.batches import make_example

    def sample(key, n, segments=None, grid=None):
        g = torch.Generator().manual_seed(n)
        meta = make_meta(model_id="m", adapter="qwen2_vl", explainer="gae", modality="image", grid=grid or [1, 1, n],
                         instruction="q", reference_answer="a", generated_answer="a", correct=True, answer_tokens=1)
        if segments:
            meta["segments"] = segments
        return Sample(key=key, attn=torch.rand(n, generator=g) + 0.01, relevance=torch.rand(n, generator=g), meta=meta)

    two = sample("two", 16, [{"kind": "image", "start": 0, "grid": [1, 3, 4], "visual": 0},
                             {"kind": "image", "start": 12, "grid": [1, 2, 2], "visual": 1}])
    one = sample("one", 12, grid=[1, 3, 4])
    inputs = ["attn", "coords"]
    ex_two, ex_one = make_example(two, inputs), make_example(one, inputs)
    assert ex_two.spans == [(0, 12, (1, 3, 4)), (12, 16, (1, 2, 2))] and ex_one.spans == [(0, 12, (1, 3, 4))]
    torch.testing.assert_close(ex_one.x, build_features(inputs, one.attn, (1, 3, 4)))
    torch.testing.assert_close(ex_two.x[:, 12:], torch.cat([build_features(["attn"], two.attn, (1, 1, 16))[:, 12:],
                                                            build_features(["coords"], two.attn[12:], (1, 2, 2))]))
    batch = collate([ex_two, ex_one])
    torch.manual_seed(0)
    model = RelevancePredictor(PredictorConfig(arch="conv2d", widths=[4, 8], inputs=inputs)).eval()
    module = PredictorModule(model)
    pred = module(batch)
    torch.testing.assert_close(pred.sum(-1), torch.ones(2))
    logits = [model.logits(ex_two.x[None, :, a:b], torch.ones(1, b - a, dtype=torch.bool), torch.tensor([g]))[0]
              for a, b, g in ex_two.spans]
    torch.testing.assert_close(pred[0], torch.softmax(torch.cat(logits), 0))
    torch.testing.assert_close(pred[1, :12], model(ex_one.x[None], torch.ones(1, 12, dtype=torch.bool),
                                                   torch.tensor([[1, 3, 4]]))[0])
    module.train()
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
