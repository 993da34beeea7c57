import json
import os

import pytest
import torch
import webdataset as wds

from data_gen.writer import ShardWriter, read_manifests, safe_key, tar_keys
from predictor.schema import SampleError, Sample, decode, make_meta


def _sample(key, n_v=6):
    meta = make_meta(model_id="m", adapter="fake", explainer="gae", modality="image", grid=[1, 2, n_v // 2],
                     instruction="q", reference_answer="a", generated_answer="a", correct=True, answer_tokens=1)
    return Sample(key=key, attn=torch.full((n_v,), 1.0 / n_v), relevance=torch.arange(n_v).float(), meta=meta,
                  extra_files={"gt_rel.npy": b"\x93NUMPY"})


def _read(out):
    urls = sorted(str(p) for p in __import__("pathlib").Path(out).glob("*.tar"))
    return [decode(raw) for raw in wds.WebDataset(urls, shardshuffle=False)] if urls else []


def test_shards_are_atomic_and_readable(tmp_path):
    out = str(tmp_path / "out")
    w = ShardWriter(out, rank=3, shard_size=2)
    for k in "abc":
        w.write(_sample(k))
    # two shards so far: one complete (renamed), one open under its temporary name
    assert sorted(os.listdir(out)) == [".lock-r00003", "manifest-r00003.jsonl", "shard-r00003-000000.tar",
                                       "shard-r00003-000001.tar.tmp"]
    assert set(read_manifests(out)) == {"a", "b"}  # c is not finished until its shard is
    w.skip("d", "missing_image", "no file x.png")
    w.close()
    assert sorted(os.listdir(out)) == [".lock-r00003", "manifest-r00003.jsonl", "shard-r00003-000000.tar",
                                       "shard-r00003-000001.tar"]
    samples = _read(out)
    assert [s.key for s in samples] == ["a", "b", "c"]
    assert samples[0].extra_files == {"gt_rel.npy": b"\x93NUMPY"} and samples[2].relevance.tolist() == list(range(6))
    done = read_manifests(out)
    assert done["c"] == {"key": "c", "status": "written", "shard": "shard-r00003-000001.tar"}
    with open(os.path.join(out, "manifest-r00003.jsonl")) as f:  # each shard's lines close with its count
        assert {"status": "shard", "shard": "shard-r00003-000001.tar", "count": 1} in map(json.loads, f)
    assert done["d"]["status"] == "skipped" and done["d"]["reason"] == "missing_image"


def test_invalid_sample_is_refused_before_writing(tmp_path):
    w = ShardWriter(str(tmp_path), shard_size=10)
    bad = _sample("x")
    bad.relevance[0] = float("nan")
    with pytest.raises(SampleError, match="finite"):
        w.write(bad)
    w.write(_sample("y"))
    w.close()
    assert [s.key for s in _read(tmp_path)] == ["y"]


def test_recovery_after_crash(tmp_path):
    out = str(tmp_path)
    w = ShardWriter(out, shard_size=2)
    for k in "abc":
        w.write(_sample(k))
    w._manifest.write('{"key": "torn')  # a line cut by SIGKILL
    w._manifest.flush()
    w._lock.release()  # crash: the OS drops a dead process's lock; the temp shard with c stays behind
    w2 = ShardWriter(out, shard_size=2)
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    assert set(w2.done) == {"a", "b"}  # c is redone
    w2.write(_sample("c"))
    w2.close()
    assert sorted(s.key for s in _read(out)) == ["a", "b", "c"]
    with open(w2.manifest_path) as f:
        assert all(json.loads(line) for line in f)  # the torn line was cut, every line parses
    assert tar_keys(os.path.join(out, "shard-r00000-000001.tar")) == ["c"]


def test_safe_key():
    assert safe_key("abc-12_x") == "abc-12_x"
    k1, k2 = safe_key("coco/000.jpg"), safe_key("coco_000_jpg")
    assert "." not in k1 and "/" not in k1 and k1 != k2
    assert safe_key("a.b") == safe_key("a.b") != safe_key("a/b")


def test_crash_between_manifest_sync_and_rename(tmp_path, monkeypatch):
    """The shard's lines are on disk but the shard never got its name: the lines count for nothing, its items
    are redone under a new shard name (the old name is never reused, so the stale lines stay meaningless)."""
    import data_gen.writer as writer_mod

    out = str(tmp_path)
    w = ShardWriter(out, shard_size=2)
    w.write(_sample("a"))
    w.write(_sample("b"))  # shard 0 committed
    w.write(_sample("c"))

    class Killed(BaseException):
        pass

    def killed(*a):
        raise Killed  # SIGKILL right before the rename

    monkeypatch.setattr(writer_mod.os, "replace", killed)
    with pytest.raises(Killed):
        w.write(_sample("d"))
    monkeypatch.undo()
    w._lock.release()  # the process is gone
    with open(w.manifest_path) as f:
        assert '"shard-r00000-000001.tar"' in f.read()  # the lines of c, d were synced
    assert set(read_manifests(out)) == {"a", "b"}  # but count for nothing
    w2 = ShardWriter(out, shard_size=2)
    for k in "cd":
        w2.write(_sample(k))
    w2.close()
    assert sorted(os.listdir(out)) == [".lock-r00000", "manifest-r00000.jsonl", "shard-r00000-000000.tar",
                                       "shard-r00000-000002.tar"]
    assert read_manifests(out)["c"]["shard"] == "shard-r00000-000002.tar"
    assert sorted(s.key for s in _read(out)) == ["a", "b", "c", "d"]


def test_a_shard_committed_by_another_rank_during_start_is_recorded_once(tmp_path, monkeypatch):
    """Rank 1 commits a shard between rank 0's reading of the manifests and its look at the tars: rank 0 must
    not take it for a shard without manifest lines and record its keys a second time."""
    import data_gen.writer as writer_mod

    out = str(tmp_path)
    other = ShardWriter(out, rank=1, shard_size=2)
    other.write(_sample("a"))
    read, committed = writer_mod._records, []

    def read_then_rank_1_commits(folder):
        recs = read(folder)
        if not committed:
            other.write(_sample("b"))  # shard-r00001-000000.tar is renamed into place here
            committed.append(True)
        return recs

    monkeypatch.setattr(writer_mod, "_records", read_then_rank_1_commits)
    ShardWriter(out, rank=0, shard_size=2).close()
    other.close()
    assert committed
    lines = [json.loads(line) for p in sorted(os.listdir(out)) if p.startswith("manifest-")
             for line in open(os.path.join(out, p))]
    assert sorted(r["key"] for r in lines if "key" in r) == ["a", "b"]  # not a second line each from rank 0
    assert [r for r in lines if r.get("status") == "shard"] == [
        {"status": "shard", "shard": "shard-r00001-000000.tar", "count": 2}]
