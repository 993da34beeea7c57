"""The data_gen loop: bad inputs, correctness filter, resume after SIGKILL, a 2-rank partition.

Most tests use a small deterministic fake adapter and explainer (the loop is model-agnostic); the
last ones run `python -m data_gen` on a tiny real Qwen2-VL built by tests/models.py. This file also
runs as a script (`python tests/test_data_gen.py ITEMS OUT ...`) so that the kill/resume and torchrun
tests can drive the loop in subprocesses.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from data_gen.build import dist_env, resolve_model_path
from data_gen.config import DataGenConfig
from data_gen.run import run
from data_gen.sources.base import Item, Source
from data_gen.writer import read_manifests
from predictor.adapters.base import Prepared
from predictor.schema import decode

from models import tiny_models  # noqa: F401  (session fixture: tiny HF model folders)

HERE = Path(__file__).resolve()
PX = 28


class FakeAdapter:
    """Deterministic stand-in: 1 visual token per 28x28 px cell; answers "yes" unless the instruction
    says "wrong"; a prompt of 3 template + N_v visual + instruction-word tokens. With `pause_at` and `gate`,
    its `pause_at`-th answer waits at the gate (see `wait_at_gate`), so that a test acts on a run at a known
    point rather than after a guessed time."""

    name, model_id, probe_layer = "fake", "fake-model", 0

    def __init__(self, pause_at: int | None = None, gate: str | None = None):
        self.pause_at, self.gate, self.answers = pause_at, gate, 0

    def prepare(self, image, instruction, video=None):
        h, w = max(1, image.height // PX), max(1, image.width // PX)
        n_v, n_i = h * w, len(instruction.split())
        cells = torch.tensor(list(image.convert("L").resize((w, h)).getdata()), dtype=torch.float32) / 255
        return Prepared(inputs={"input_ids": torch.zeros(1, 3 + n_v + n_i, dtype=torch.long), "cells": cells},
                        visual_positions=torch.arange(3, 3 + n_v), instruction_positions=torch.arange(3 + n_v, 3 + n_v + n_i),
                        grid=(1, h, w))

    def generate(self, prepared, max_new_tokens=16):
        self.answers += 1
        if self.answers == self.pause_at:
            wait_at_gate(self.gate)
        return torch.tensor([7]), "yes"

    def layer0_attention(self, prepared):
        c = prepared.inputs["cells"]
        heads = torch.stack([torch.softmax(c, 0), torch.softmax(-c, 0)])  # (H=2, N_v)
        return heads, heads.mean(0)  # the Adapter contract: (per_head, mean)


def wait_at_gate(gate: str, timeout: float = 120.0) -> None:
    """Create `gate`.paused, then wait until the file `gate` exists (the test opens it, or kills the run)."""
    Path(gate + ".paused").touch()
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never opened the gate {gate}")
        time.sleep(0.01)


def wait_until_paused(gate: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Return once the run of `proc` waits at `gate` (see `wait_at_gate`); fail if it ends first."""
    deadline = time.monotonic() + timeout
    while not Path(str(gate) + ".paused").exists():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before reaching the gate"
        assert time.monotonic() < deadline, f"the run did not reach the gate in {timeout} s"
        time.sleep(0.01)


def fake_explainer(adapter, prepared, answer_ids):
    c = prepared.inputs["cells"]
    return c / c.sum().clamp_min(1e-6) * (float("nan") if prepared.seq_len == 3 + c.numel() + 4 else 1.0)


class ListSource(Source):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        if isinstance(self.items[i], Exception):
            raise self.items[i]
        return self.items[i]


def make_items(folder: Path, n: int) -> list[Item]:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        path = folder / f"img{i}.png"
        if not path.exists():
            Image.new("RGB", (56 + 28 * (i % 3), 56), (10 * i % 255, 100, 30)).save(path)
        items.append(Item(id=f"item.{i}", instruction=f"where is {i}", answer="yes", image=str(path)))
    return items


def read_out(out) -> tuple[list, dict]:
    import webdataset as wds

    urls = sorted(str(p) for p in Path(out).glob("*.tar"))
    samples = [decode(raw) for raw in wds.WebDataset(urls, shardshuffle=False)] if urls else []
    return samples, read_manifests(str(out))


def test_loop_writes_valid_samples_and_skips_bad_input(tmp_path):
    items = make_items(tmp_path / "img", 6)
    (tmp_path / "img" / "junk.png").write_bytes(b"not a png")
    good = (tmp_path / "img" / "img0.png").read_bytes()
    (tmp_path / "img" / "cut.png").write_bytes(good[: len(good) // 2])
    big = tmp_path / "img" / "big.png"
    Image.new("RGB", (28 * 20, 28 * 20)).save(big)
    items += [
        Item(id="missing", instruction="q", answer="yes", image=str(tmp_path / "nope.png")),
        Item(id="junk", instruction="q", answer="yes", image=str(tmp_path / "img" / "junk.png")),
        Item(id="cut", instruction="q", answer="yes", image=str(tmp_path / "img" / "cut.png")),
        Item(id="empty", instruction="  ", answer="yes", image=items[0].image),
        Item(id="long", instruction="q", answer="yes", image=str(big)),  # 400 visual tokens > max_seq_len
        Item(id="nan", instruction="four words in here", answer="yes", image=items[0].image),  # explainer -> NaN
        Item(id="wrong", instruction="q", answer="no", image=items[0].image),
        ValueError("malformed record"),
    ]
    items[1].extra = {"gt_relevance": [0.25, 0.25, 0.5, 0.0, 0.0, 0.0], "question_type": "shape"}
    cfg = DataGenConfig(out=str(tmp_path / "out"), max_seq_len=300, shard_size=4, save_heads=True, progress=False,
                        min_items_for_failure_rate=100)
    summary = run(cfg, ListSource(items), FakeAdapter(), fake_explainer, "fake_gae")
    assert summary.written == 6 and summary.wrong_answers == 1
    assert summary.skipped == {"missing_image": 1, "unreadable_image": 2, "empty_instruction": 1, "too_long": 1,
                               "nonfinite_relevance": 1, "bad_item": 1}
    samples, done = read_out(tmp_path / "out")
    assert len(done) == 14 and {s.key for s in samples} == {k for k, r in done.items() if r["status"] == "written"}
    assert all("." not in s.key for s in samples)  # item ids with dots become safe WebDataset keys
    s = next(x for x in samples if x.meta["item_id"] == "item.1")
    assert s.meta["grid"] == [1, 2, 3] and s.attn_heads.shape == (2, 6) and s.thumbnail.startswith(b"\x89PNG")
    assert s.meta["adapter"] == "fake" and s.meta["explainer"] == "fake_gae" and s.meta["correct"] is True
    assert s.meta["source_extra"] == {"question_type": "shape"} and s.extra_files["gt_rel.npy"].startswith(b"\x93NUMPY")
    assert done["index-000000013"]["reason"] == "bad_item"
    assert json.loads((tmp_path / "out" / "summary-r00000.json").read_text())["written"] == 6
    # re-running the finished command does nothing and loses nothing
    again = run(cfg, ListSource(items), FakeAdapter(), fake_explainer, "fake_gae")
    assert again.processed == 0 and again.already_done == 14 and len(read_out(tmp_path / "out")[0]) == 6


def test_keep_wrong_and_correctness_none(tmp_path):
    items = make_items(tmp_path / "img", 2)
    items[1].answer = "no"
    cfg = DataGenConfig(out=str(tmp_path / "a"), keep_wrong=True, progress=False)
    assert run(cfg, ListSource(items), FakeAdapter(), fake_explainer, "x").wrong_answers == 1
    samples, _ = read_out(tmp_path / "a")
    assert sorted(s.meta["correct"] for s in samples) == [False, True]
    cfg = DataGenConfig(out=str(tmp_path / "b"), correctness="none", progress=False)
    assert run(cfg, ListSource(items), FakeAdapter(), fake_explainer, "x").written == 2


def test_abort_past_failure_rate(tmp_path):
    items = [Item(id=f"m{i}", instruction="q", answer="yes", image=str(tmp_path / "none.png")) for i in range(30)]
    cfg = DataGenConfig(out=str(tmp_path / "o"), progress=False, max_failure_rate=0.5, min_items_for_failure_rate=10)
    with pytest.raises(RuntimeError, match=r"10 of 10 items failed.*missing_image.*max_failure_rate"):
        run(cfg, ListSource(items), FakeAdapter(), fake_explainer, "x")
    assert len(read_manifests(str(tmp_path / "o"))) == 10  # what was done is recorded; a rerun resumes


def test_missing_model_path_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="reference-qwen2vl.*reference_mllm.train"):
        resolve_model_path(str(tmp_path / "reference-qwen2vl"))
    with pytest.raises(FileNotFoundError, match="model.path"):
        resolve_model_path(str(tmp_path / "nowhere"))
    # a hub id not in the cache: the command that downloads it, with a CLI the installed huggingface_hub has
    with pytest.raises(FileNotFoundError, match="hf download Org/Missing-Model --local-dir"):
        resolve_model_path("Org/Missing-Model")
    from importlib.metadata import entry_points

    assert "hf" in {ep.name for ep in entry_points(group="console_scripts") if ep.dist.name == "huggingface_hub"}


def test_labeller_record_refuses_a_different_model(tmp_path):
    from data_gen.build import model_fingerprint
    from data_gen.labeller import check_same_labeller

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"a" * 1000)
    first = model_fingerprint(str(model))
    out = str(tmp_path / "out")
    check_same_labeller(out, {"model": "m", "model_fingerprint": first, "explainer": {"name": "gae"}})
    check_same_labeller(out, {"model": "m", "model_fingerprint": first, "explainer": {"name": "gae"}})  # resume: fine
    check_same_labeller(out, {"model": str(model), "model_fingerprint": first, "explainer": {"name": "gae"}})  # same weights, other path
    (model / "model.safetensors").write_bytes(b"b" * 1000)  # retrained in place, same size
    second = model_fingerprint(str(model))
    assert second != first
    with pytest.raises(ValueError, match="model_fingerprint.*new folder.*delete"):
        check_same_labeller(out, {"model": "m", "model_fingerprint": second, "explainer": {"name": "gae"}})


def test_dist_env(monkeypatch):
    monkeypatch.setenv("RANK", "1"), monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_env() == (1, 2, 1)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        dist_env()


# --- subprocess tests: the script entry below drives the loop ----------------------------------------
def _script(img: Path, out: Path, n: int, shard_size: int = 3, pause_at: int = 0,
            gate: Path | None = None) -> list[str]:
    """The loop over n items of the fake adapter; pause_at > 0: its pause_at-th answer waits at `gate`."""
    return [str(HERE), str(img), str(out), str(n), str(shard_size), str(pause_at), str(gate or "")]


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return env


def _check_exactly_once(out: Path, n: int) -> list:
    samples, done = read_out(out)
    keys = [s.key for s in samples]
    assert len(keys) == len(set(keys)), "a sample was written twice"
    assert len(done) == n and set(keys) == {k for k, r in done.items() if r["status"] == "written"}
    assert not list(out.glob("*.tmp"))
    return samples


def test_resume_after_sigkill(tmp_path):
    n = 40
    make_items(tmp_path / "img", n)
    out, gate = tmp_path / "out", tmp_path / "gate"
    # shards of 3: items 0-8 are in three finished shards, item 9 is in the open one, and item 10 is being
    # answered when the run is killed
    proc = subprocess.Popen([sys.executable, *_script(tmp_path / "img", out, n, pause_at=11, gate=gate)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_paused(gate, proc)
        assert len(read_manifests(str(out))) == 9
        assert [p.name for p in out.glob("*.tmp")] == ["shard-r00000-000003.tar.tmp"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    subprocess.run([sys.executable, *_script(tmp_path / "img", out, n)], env=_env(), check=True,
                   stdout=subprocess.DEVNULL)
    assert len(_check_exactly_once(out, n)) == n


def test_two_rank_torchrun_equals_single_process(tmp_path):
    n = 13
    make_items(tmp_path / "img", n)
    subprocess.run([sys.executable, *_script(tmp_path / "img", tmp_path / "one", n)], env=_env(), check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    *_script(tmp_path / "img", tmp_path / "two", n)], env=_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    one = {s.key: s for s in _check_exactly_once(tmp_path / "one", n)}
    two = {s.key: s for s in _check_exactly_once(tmp_path / "two", n)}
    ranks = {p.name.split("-")[1] for p in (tmp_path / "two").glob("shard-*.tar")}
    assert ranks == {"r00000", "r00001"}  # both ranks wrote their own shards
    assert one.keys() == two.keys()
    for k in one:
        assert torch.equal(one[k].relevance, two[k].relevance) and one[k].meta == two[k].meta


# --- end to end on a tiny real Qwen2-VL (tests/models.py) ----------------------------------------------
def test_cli_end_to_end_tiny_qwen2_vl(tiny_models, tmp_path):
    import numpy as np

    out = tmp_path / "shards"
    cmd = [sys.executable, "-m", "data_gen", f"model.path={tiny_models['qwen2_vl']}", "max_items=3",
           "source.sizes=[[112,112]]", "correctness=none", "max_new_tokens=2", "save_heads=true", f"out={out}",
           f"hydra.run.dir={tmp_path / 'hydra'}", "progress=false"]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=HERE.parent.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "3 written" in res.stdout and res.stdout.strip().splitlines()[-1].endswith(f" -> {out}/")  # the folder
    samples = _check_exactly_once(out, 3)
    for s in samples:
        assert s.meta["adapter"] == "qwen2_vl" and s.meta["explainer"] == "gae" and s.meta["grid"] == [1, 4, 4]
        assert s.meta["source_extra"]["question_type"] in ("shape", "colour")
        assert s.relevance.sum() > 0 and s.attn_heads.shape == (4, 16)
        assert np.load(__import__("io").BytesIO(s.extra_files["gt_rel.npy"])).shape == (16,)
    summary = json.loads((out / "summary-r00000.json").read_text())
    assert summary["written"] == 3 and summary["visual_tokens_per_sample"] == 16
    # resuming into the same folder with another explainer would mix labels: refused, nothing touched
    res = subprocess.run([*cmd, "explainer=attention"], env=_env(), capture_output=True, text=True,
                         cwd=HERE.parent.parent)
    assert res.returncode != 0 and "labelled another way" in res.stderr and "explainer" in res.stderr
    assert "Traceback" not in res.stderr and res.stderr.rstrip().splitlines()[-1].startswith("error: ")
    assert json.loads((out / "summary-r00000.json").read_text()) == summary
    # a missing model fails before any work, naming the path and how to fix it
    res = subprocess.run([*cmd[:3], f"model.path={tmp_path / 'none'}", *cmd[4:]], env=_env(), capture_output=True,
                         text=True, cwd=HERE.parent.parent)
    assert res.returncode != 0 and f"model.path='{tmp_path / 'none'}'" in res.stderr


@pytest.mark.parametrize("case", ["all_skipped", "abort"])
def test_cli_that_writes_nothing_exits_with_one_line(tmp_path, case):
    """A one-item file whose image is missing writes nothing: exit 1 with one `error:` line naming the folder
    and the reasons, not exit 0 with "0 written". Too many failed items: the same line, not Hydra's trace."""
    items = tmp_path / "items.jsonl"
    n = 1 if case == "all_skipped" else 3
    items.write_text("".join(json.dumps({"id": f"x{i}", "image": f"gone{i}.png", "instruction": "What?", "answer": "a"})
                             + "\n" for i in range(n)))
    out = tmp_path / "shards"
    res = subprocess.run([sys.executable, "-m", "data_gen", "source=jsonl", f"source.path={items}", f"out={out}",
                          "model.device=cpu", "min_items_for_failure_rate=2", "progress=false",
                          f"hydra.run.dir={tmp_path / 'hydra'}"],
                         env=_env(), capture_output=True, text=True, cwd=HERE.parent.parent, timeout=300)
    last = res.stderr.rstrip().splitlines()[-1]
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert last.startswith("error: ") and "missing_image" in last and str(out) in last
    assert ("nothing was written" if case == "all_skipped" else "data_gen aborted") in last


def test_qwen3_vl_labels_synthetic_scenes_in_its_32_px_cells(tiny_models, tmp_path):
    """data_gen on Qwen3-VL: the synthetic source takes the adapter's 32 px cell (its ground truth has one entry
    per visual token), gae labels through the DeepStack model; an explicit other cell is refused by name."""
    import numpy as np

    from data_gen.run import main

    model = {"adapter": "qwen3_vl", "path": str(tiny_models["qwen3_vl"]), "dtype": "float32", "device": "cpu"}
    source = {"name": "synthetic_scenes", "sizes": [[128, 96]]}
    summary = main(model=model, source=source, explainer={"name": "gae"},
                   options={"out": str(tmp_path / "out"), "max_items": 2, "correctness": "none",
                            "max_new_tokens": 2, "progress": False})
    assert summary.written == 2
    for s in _check_exactly_once(tmp_path / "out", 2):
        assert s.meta["adapter"] == "qwen3_vl" and s.meta["grid"] == [1, 4, 3]
        assert s.relevance.shape == (12,) and torch.isfinite(s.relevance).all() and s.relevance.sum() > 0
        assert np.load(__import__("io").BytesIO(s.extra_files["gt_rel.npy"])).shape == (12,)
    with pytest.raises(ValueError, match=r"source.token_px=28.*covers 32 px"):
        main(model=model, source={**source, "sizes": [[112, 112]], "token_px": 28}, explainer={"name": "gae"},
             options={"out": str(tmp_path / "other"), "max_items": 1, "progress": False})


def test_unknown_option_is_refused_with_the_available_ones():
    from data_gen.run import main

    with pytest.raises(KeyError, match=r"unknown data_gen option\(s\) \['max_samples'\].*available: .*max_items"):
        main(model={}, source={}, explainer={}, options={"max_samples": 5})


def _script_main(img: str, out: str, n: str, shard_size: str, pause_at: str, gate: str) -> None:
    rank, world, _ = dist_env()
    cfg = DataGenConfig(out=out, shard_size=int(shard_size), progress=False)
    adapter = FakeAdapter(int(pause_at) or None, gate or None)
    run(cfg, ListSource(make_items(Path(img), int(n))), adapter, fake_explainer, "fake_gae", rank=rank,
        world_size=world)


if __name__ == "__main__":
    _script_main(*sys.argv[1:])


def test_cli_labels_a_multi_turn_multi_image_llava_conversation(tiny_models, tmp_path):
    """One sample per answered assistant turn: the later turn with its history, the two-image record with one
    segment per image; gae relevance over all visual tokens; the schema validates them."""
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (112, 84), (200, 30, 30)).save(tmp_path / "imgs" / "a.png")
    Image.new("RGB", (56, 56), (30, 30, 200)).save(tmp_path / "imgs" / "b.png")
    records = [{"id": "c", "image": "a.png", "conversations": [
                   {"from": "human", "value": "<image>\nwhat shape is the red object?"}, {"from": "gpt", "value": "square"},
                   {"from": "human", "value": "what colour is the square?"}, {"from": "gpt", "value": "red"}]},
               {"id": "m", "image": ["a.png", "b.png"], "conversations": [
                   {"from": "human", "value": "<image> or <image>: how many circle?"}, {"from": "gpt", "value": "no"}]}]
    (tmp_path / "conv.json").write_text(json.dumps(records))
    out = tmp_path / "shards"
    cmd = [sys.executable, "-m", "data_gen", f"model.path={tiny_models['qwen2_vl']}", "source=llava_json",
           f"source.path={tmp_path / 'conv.json'}", f"source.image_root={tmp_path / 'imgs'}", "correctness=none",
           "max_new_tokens=2", f"out={out}", f"hydra.run.dir={tmp_path / 'hydra'}", "progress=false"]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=HERE.parent.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    samples = {s.meta["item_id"]: s for s in _check_exactly_once(out, 3)}
    first, later, two = samples["c-0"], samples["c-1"], samples["m-0"]
    assert "segments" not in first.meta and first.meta["grid"] == [1, 3, 4]  # as before
    assert later.meta["instruction"] == "what colour is the square?" and later.meta["user_turns"] == 2
    assert later.meta["grid"] == [1, 3, 4] and later.meta["prompt_tokens"] > first.meta["prompt_tokens"]
    assert len(later.meta["instruction_positions"]) == 6  # what colour is the square ?
    assert two.meta["grid"] == [1, 1, 16] and [(s["start"], s["grid"], s["visual"]) for s in two.meta["segments"]] == \
        [(0, [1, 3, 4], 0), (12, [1, 2, 2], 1)]
    assert two.relevance.shape == (16,) and two.relevance.sum() > 0 and two.attn_heads.shape == (4, 16)
