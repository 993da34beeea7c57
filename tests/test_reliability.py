"""Nothing lost, nothing mixed: one writer per output, duplicate ids, a full disk mid-commit, training
checkpoints after a kill, the labeller guard, and one-line errors (RELIABILITY.md lists what each
test stands for). The data_gen loop runs with the fake adapter of tests/test_data_gen.py."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import torch

from data_gen.lock import FolderInUse
from data_gen.config import DataGenConfig
from data_gen.labeller import check_same_labeller, labeller_settings
from data_gen.run import run
from data_gen.sources.base import Item
from data_gen.writer import ShardWriter, read_manifests, tar_keys
from predictor.cli import describe, one_line_errors
from predictor.training.shards import ReadStats, read_shard
from test_data_gen import (FakeAdapter, ListSource, _env, _script, fake_explainer, make_items, read_out,
                           wait_until_paused)

ROOT = Path(__file__).resolve().parents[1]


def _run(out, items, shard_size=7, rank=0, world=1):
    cfg = DataGenConfig(out=str(out), shard_size=shard_size, progress=False)
    return run(cfg, ListSource(items), FakeAdapter(), fake_explainer, "fake_gae", rank=rank, world_size=world)


def _exactly_once(out, n):
    """Every item has one manifest record, and every written one is in exactly one shard."""
    samples, done = read_out(out)
    keys = [s.key for s in samples]
    assert len(keys) == len(set(keys)), "a sample was written twice"
    assert len(done) == n, f"{len(done)} records for {n} items"
    assert set(keys) == {k for k, r in done.items() if r["status"] == "written"}
    return samples, done


# --- 1. one writer per output slot ---------------------------------------------------------------------
HOLD = textwrap.dedent("""
    import sys, time
    from data_gen.writer import ShardWriter
    w = ShardWriter(sys.argv[1], rank=0)
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _holder(out, seconds=60):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(seconds)], stdout=subprocess.PIPE, text=True,
                            env=_env())
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_second_writer_on_a_rank_is_refused_naming_the_holder(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(FolderInUse, match=rf"pid {proc.pid} on host {socket.gethostname()}") as e:
            ShardWriter(str(tmp_path), rank=0)
        assert str(tmp_path) in str(e.value) and "out=" in str(e.value)
        ShardWriter(str(tmp_path), rank=1).close()  # torchrun ranks each hold their own slot
    finally:
        proc.kill()
        proc.wait()
    # the holder died (SIGKILL): its stale lock file is taken over
    w = ShardWriter(str(tmp_path), rank=0)
    assert json.loads((tmp_path / ".lock-r00000").read_text())["pid"] == os.getpid()
    w.close()
    ShardWriter(str(tmp_path), rank=0).close()  # and released by close()


def test_two_data_gen_runs_on_one_out_lose_nothing(tmp_path):
    """Two runs on one out= (shard sizes 20 and 10) lose no item: the second is refused while the first writes."""
    n = 50
    make_items(tmp_path / "img", n)
    out, gate = tmp_path / "out", tmp_path / "gate"
    # the first run waits at its 25th item (one shard of 20 finished, 4 items in the open one) until the
    # second run is over: it is alive, and holds the folder, whatever the time the second one takes
    first = subprocess.Popen([sys.executable, *_script(tmp_path / "img", out, n, shard_size=20, pause_at=25,
                                                       gate=gate)],
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_paused(gate, first)
        second = subprocess.run([sys.executable, *_script(tmp_path / "img", out, n, shard_size=10)], env=_env(),
                                capture_output=True, text=True, timeout=120)
        assert first.poll() is None
        assert second.returncode != 0 and f"pid {first.pid}" in second.stderr
        gate.touch()
        assert first.wait(timeout=120) == 0, first.stderr.read()[-2000:]
    finally:
        first.kill()
        first.wait()
    samples, done = _exactly_once(out, n)
    assert len(samples) == n and {r["shard"] for r in done.values()} == {f"shard-r00000-00000{i}.tar" for i in range(3)}


# --- 2. duplicate item ids -----------------------------------------------------------------------------
def _with_duplicates(tmp_path):
    items = make_items(tmp_path / "img", 8)
    items[5] = Item(id="item.2", instruction="another question", answer="yes", image=items[5].image)
    items[7] = Item(id="item.2", instruction="a third one", answer="yes", image=items[7].image)
    return items


@pytest.mark.parametrize("world", [1, 2, 3])
def test_duplicate_ids_are_skipped_and_never_written_twice(tmp_path, world):
    items, out = _with_duplicates(tmp_path), tmp_path / "out"
    summaries = [_run(out, items, shard_size=3, rank=r, world=world) for r in range(world)]
    assert sum(s.already_done for s in summaries) == 0  # a new folder: nothing was done before
    assert sum(s.skipped.get("duplicate_id", 0) for s in summaries) == 2
    samples, done = _exactly_once(out, 8)
    assert len(samples) == 6
    written = {s.key: s for s in samples}
    first = next(k for k in written if written[k].meta["item_id"] == "item.2")
    assert written[first].meta["instruction"] == "where is 2"  # the first copy wins, whatever the world size
    for i in (5, 7):
        rec = done[f"{first}#{i}"]
        assert rec["status"] == "skipped" and rec["reason"] == "duplicate_id" and "item 2" in rec["detail"]
    again = [_run(out, items, shard_size=3, rank=r, world=world) for r in range(world)]  # resume: all done
    assert sum(s.already_done for s in again) == 8 and sum(s.processed for s in again) == 0


def test_duplicate_jsonl_ids_end_to_end(tmp_path):
    """Two jsonl lines with id `dup`: the second is skipped as duplicate_id, so no shard holds one key twice."""
    from data_gen.sources.jsonl import JsonlSource
    from predictor.training.shards import read_shards, resolve_shards

    make_items(tmp_path, 5)
    lines = [{"id": i, "image": f"img{n}.png", "instruction": f"q{n}", "answer": "yes"}
             for n, i in enumerate(["a", "dup", "b", "dup", "c"])]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    src = JsonlSource(str(tmp_path / "items.jsonl"))
    assert [src.item_id(i) for i in range(5)] == ["a", "dup", "b", "dup", "c"]
    cfg = DataGenConfig(out=str(tmp_path / "out"), shard_size=100, progress=False)
    summary = run(cfg, src, FakeAdapter(), fake_explainer, "fake_gae")
    assert (summary.written, summary.skipped, summary.already_done) == (4, {"duplicate_id": 1}, 0)
    samples, stats = read_shards(resolve_shards(str(tmp_path / "out")), progress=False)
    assert sorted(s.key for s in samples) == ["a", "b", "c", "dup"] and not stats.corrupt_shards
    assert next(s for s in samples if s.key == "dup").meta["instruction"] == "q1"
    assert read_manifests(str(tmp_path / "out"))["dup#3"]["reason"] == "duplicate_id"


def test_writer_refuses_a_key_twice(tmp_path):
    from test_writer import _sample

    w = ShardWriter(str(tmp_path), shard_size=10)
    w.write(_sample("a"))
    with pytest.raises(ValueError, match="'a' is already written"):
        w.write(_sample("a"))  # still in the open shard
    w.close()
    w = ShardWriter(str(tmp_path), shard_size=10)
    with pytest.raises(ValueError, match="already written"):
        w.write(_sample("a"))  # in a finished shard
    w.close()


def test_reader_drops_one_bad_sample_not_the_shard(tmp_path):
    from test_writer import _sample

    from predictor.schema import encode

    path = tmp_path / "s.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key in ["a", "dup", "dup", "b"]:  # two samples with one key: a shard of the old writer
            for ext, data in encode(_sample(key)).items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, __import__("io").BytesIO(data))
        info = tarfile.TarInfo("c.meta.json")  # a sample that breaks the schema (no arrays)
        info.size = 2
        tf.addfile(info, __import__("io").BytesIO(b"{}"))
    stats = ReadStats()
    samples = read_shard(path, stats=stats)
    assert [s.key for s in samples] == ["a", "dup", "b"]
    assert stats.skipped_samples == 2 and not stats.corrupt_shards
    assert any("dup" in r for r in stats.skip_reasons)


# --- 3. a full disk in the middle of a shard's commit ----------------------------------------------------
def test_full_disk_during_manifest_append_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    """ENOSPC in a manifest append, then space freed and the run resumed: each item ends up exactly once."""
    n, out = 40, tmp_path / "out"
    items = make_items(tmp_path / "img", n)
    real = ShardWriter._append
    calls = {"n": 0}

    class FullDisk:
        """The manifest file as the disk fills: 300 more bytes land (some whole lines, a torn one), then ENOSPC."""

        def __init__(self, f):
            self.f, self.left = f, 300

        def write(self, data):
            self.f.write(data[: self.left])
            self.f.flush()
            if len(data) > self.left:
                self.left = 0
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def append_until_full(self, records):
        calls["n"] += 1
        if calls["n"] == 4 and any(r.get("status") == "written" for r in records):
            self._manifest = FullDisk(self._manifest)
        return real(self, records)

    monkeypatch.setattr(ShardWriter, "_append", append_until_full)
    items[1] = Item(id="skipme", instruction="", answer="yes", image=items[1].image)  # skips call _append too
    with pytest.raises(OSError) as e:
        _run(out, items, shard_size=7)
    # the real cause, naming the file: not "flush of closed file" from cleaning up after it
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out / "manifest-r00000.jsonl")
    assert describe(e.value).startswith("No space left on device (") and "re-run the same command" in describe(e.value)
    monkeypatch.setattr(ShardWriter, "_append", real)  # space freed
    _run(out, items, shard_size=7)
    samples, _ = _exactly_once(out, n)
    assert len(samples) == n - 1
    assert sum(len(tar_keys(str(p))) for p in out.glob("*.tar")) == n - 1  # no key in two shards


def test_one_line_errors():
    with pytest.raises(SystemExit, match=r"^error: Read-only file system \(/data/x\): .*writable folder"):
        with one_line_errors():
            raise OSError(errno.EROFS, "Read-only file system", "/data/x")
    with pytest.raises(SystemExit, match="^error: .*pid 7"):
        with one_line_errors(FolderInUse):
            raise FolderInUse("out is being written by another process (pid 7 ...)")
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        with one_line_errors():
            1 / 0


def test_one_line_errors_full_trace_on_request(monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(OSError):
        with one_line_errors():
            raise OSError(errno.ENOSPC, "No space left on device", "/data/x")


# --- 10. the labeller guard covers what changes labels ----------------------------------------------------
@pytest.mark.parametrize("change", [{"max_new_tokens": 4}, {"max_pixels": 100_000}, {"correctness": "exact"},
                                    {"keep_wrong": True}, {"dtype": "bfloat16"}])
def test_resume_with_other_label_settings_is_refused(tmp_path, change):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    model = {"path": str(model_dir), "dtype": "float32", "attn_implementation": "fp32_capture"}
    out = str(tmp_path / "out")

    def settings(**kw):
        m = {**model, **{k: v for k, v in kw.items() if k == "dtype"}}
        cfg = DataGenConfig(out=out, **{k: v for k, v in kw.items() if k != "dtype"})
        return labeller_settings(m, str(model_dir), "qwen2_vl", {"name": "gae"}, cfg)

    check_same_labeller(out, settings())
    check_same_labeller(out, settings(shard_size=3, progress=False))  # what does not change labels may change
    key = next(iter(change))
    with pytest.raises(ValueError, match=rf"{key}: .* there, .* now"):
        check_same_labeller(out, settings(**change))


def test_labeller_record_without_a_setting_is_refused(tmp_path):
    """A setting the record lacks cannot be checked, so resuming is refused rather than assumed."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "labeller.json").write_text(json.dumps({"adapter": "qwen2_vl", "model_fingerprint": "f"}))
    with pytest.raises(ValueError, match="max_new_tokens: not recorded there, 16 now"):
        check_same_labeller(str(out), {"adapter": "qwen2_vl", "model_fingerprint": "f", "max_new_tokens": 16})


# --- 4. last.ckpt is the latest epoch: kill mid-run, resume from the killed epoch ----------------------------
TRAIN_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir

    kill_at, overrides = int(sys.argv[1]), sys.argv[2:]

    class Probe(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            print("epoch", trainer.current_epoch, flush=True)
            if trainer.current_epoch == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, as a real kill

    init = pl.Trainer.__init__
    def with_probe(self, *a, callbacks=None, **kw):
        init(self, *a, callbacks=[*(callbacks or []), Probe()], **kw)
    pl.Trainer.__init__ = with_probe
    from predictor.training.train import train
    with initialize_config_dir(config_dir=os.path.join({root!r}, "conf", "train"), version_base="1.3"):
        train(compose(config_name="train", overrides=overrides))
""").format(root=str(ROOT))


def test_last_checkpoint_is_the_latest_epoch_after_a_kill(tmp_path):
    from synthetic_shards import write_synthetic_shards

    write_synthetic_shards(tmp_path / "shards", 120, grids=[(1, 6, 6)], samples_per_shard=120, num_heads=2)
    # lr 0: val/kl never improves after epoch 0, so only a last.ckpt rewritten every epoch has epoch 3 in it
    common = [f"data.shards={tmp_path / 'shards'}", "model.widths=[4]", "logger=none", "optim.lr=0.0",
              "optim.schedule=constant", "trainer.enable_progress_bar=false", "trainer.max_epochs=6",
              f"run_dir={tmp_path / 'run'}", f"export_dir={tmp_path / 'export'}"]
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, "4", *common], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [l for l in killed.stdout.splitlines() if l.startswith("epoch")][-1] == "epoch 4"
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 3  # epochs 0-3 finished before the kill
    resumed = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, "-1", *common, f"ckpt_path={last}"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [l for l in resumed.stdout.splitlines() if l.startswith("epoch")] == ["epoch 4", "epoch 5"]
    assert (tmp_path / "export" / "model.safetensors").is_file()
