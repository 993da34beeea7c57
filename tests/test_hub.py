"""Hub ids: loading through a local HF cache laid out as huggingface_hub writes it, offline; publishing
against a mocked HfApi. Nothing reaches the network (HF_HUB_OFFLINE=1, conftest)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants

from predictor import load_predictor, read_export_config, save_predictor
from predictor.hub import main as hub_main
from predictor.export import save_pretrained
from predictor.hub import push_export, push_to_hub, resolve_export
from predictor.config import PredictorConfig
from predictor.model import RelevancePredictor

ROOT = Path(__file__).resolve().parents[1]
REV_A, REV_B = "a" * 40, "b" * 40


def _export(path: Path, seed: int, model_id: str = "Qwen/Qwen2-VL-7B-Instruct") -> Path:
    torch.manual_seed(seed)
    model = RelevancePredictor(PredictorConfig(widths=[8, 16], inputs=["attn"]))
    return save_predictor(model, path, trained_on={"model_id": model_id, "adapter": "qwen2_vl", "modality": "image"},
                          metrics={"recall@25": 0.5})


def _cache_repo(cache: Path, repo_id: str, snapshots: dict[str, Path], refs: dict[str, str]) -> Path:
    """The cache's own layout: models--org--name/{refs/<name> (a commit hash), snapshots/<hash>/<files>}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for rev, src in snapshots.items():
        shutil.copytree(src, repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for name, rev in refs.items():
        (repo / "refs" / name).write_text(rev)
    return repo


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    a, b = _export(tmp_path / "a", 0), _export(tmp_path / "b", 1)
    _cache_repo(tmp_path / "hub", "my-org/pred", {REV_A: a, REV_B: b}, {"main": REV_B, "v1": REV_A})
    return tmp_path


def _same(m1, m2) -> bool:
    return all(torch.equal(x, y) for x, y in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_repo_id_loads_from_the_offline_cache_by_ref_tag_and_commit(cache):
    main = load_predictor("my-org/pred")
    assert _same(main, load_predictor(cache / "b")) and not _same(main, load_predictor(cache / "a"))
    assert _same(load_predictor("my-org/pred", revision="v1"), load_predictor(cache / "a"))
    assert _same(load_predictor("my-org/pred", revision=REV_A), load_predictor(cache / "a"))
    assert main.export_config["trained_on"]["model_id"] == "Qwen/Qwen2-VL-7B-Instruct"


def test_offline_misses_say_what_to_run(cache):
    with pytest.raises(FileNotFoundError, match=r"revision 'v9'.*not in the local HF cache.*cache has revisions: "
                       r"main, v1.*python -m predictor.hub download my-org/pred --revision v9"):
        load_predictor("my-org/pred", revision="v9")
    with pytest.raises(FileNotFoundError, match=r"'other/pred'.*cache has none of it.*HF_HUB_OFFLINE=1"):
        load_predictor("other/pred")
    with pytest.raises(FileNotFoundError, match=r"no such folder, and not a hub repo id"):
        load_predictor("./no/such/export")
    with pytest.raises(ValueError, match=r"revision='v1' was given for the local folder"):
        load_predictor(cache / "a", revision="v1")


def test_snapshot_missing_the_weights_names_the_file_and_the_download(cache):
    (cache / "hub" / "models--my-org--pred" / "snapshots" / REV_B / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks model.safetensors.*python -m predictor.hub download my-org/pred"):
        load_predictor("my-org/pred")


class FakeApi:
    """Records the calls push makes, and what the uploaded folder held at upload time."""

    def __init__(self):
        self.calls, self.files = [], {}

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        self.calls.append(("upload_folder", repo_id, kw))
        self.files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        return "https://huggingface.co/commit/x"


def test_push_uploads_the_export_with_a_hub_card(tmp_path):
    exp, api = _export(tmp_path / "e", 0), FakeApi()
    push_export(exp, "my-org/pred", private=True, revision="v2", api=api)
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][2] == {"private": True, "exist_ok": True} and api.calls[2][2]["revision"] == "v2"
    assert set(api.files) == {"config.json", "model.safetensors", "README.md"}
    assert api.files["model.safetensors"] == (exp / "model.safetensors").read_bytes()
    card = ModelCard(api.files["README.md"].decode())  # the hub's own parser of the YAML metadata
    assert card.data.library_name == "relevance-predictor"
    assert card.data.base_model == "Qwen/Qwen2-VL-7B-Instruct" and card.data.license == "apache-2.0"
    assert {"token-pruning", "image"} <= set(card.data.tags) and card.data.to_dict()["modality"] == "image"
    assert 'load_predictor("my-org/pred")' in card.text and 'load_adapter("qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct")' in card.text


def test_push_refuses_what_it_cannot_describe_or_load(tmp_path):
    local = _export(tmp_path / "l", 0, model_id=str(ROOT / "checkpoints" / "reference-qwen2vl"))
    with pytest.raises(ValueError, match="is a local path.*--base-model"):
        push_export(local, "my-org/pred", api=FakeApi())
    push_export(local, "my-org/pred", base_model="Qwen/Qwen2-VL-2B-Instruct", api=(api := FakeApi()))
    assert ModelCard(api.files["README.md"].decode()).data.base_model == "Qwen/Qwen2-VL-2B-Instruct"
    cfg = json.loads((local / "config.json").read_text())
    cfg["predictor"]["widths"] = [8, 32]
    (local / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match"):  # never publish an export that cannot load
        push_export(local, "my-org/pred", base_model="Qwen/Qwen2-VL-2B-Instruct", api=FakeApi())
    with pytest.raises(ValueError, match="expected org/name"):
        push_export(_export(tmp_path / "m", 0), "not a repo", api=FakeApi())


def test_push_command_and_the_hub_trio(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    api = FakeApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: api)
    exp = _export(tmp_path / "e", 0)
    assert hub_main(["push", str(exp), "my-org/pred"]) == 0
    assert capsys.readouterr().out.strip() == "https://huggingface.co/commit/x" and "README.md" in api.files
    assert hub_main(["push", str(tmp_path / "nope"), "my-org/pred"]) == 1
    assert "not a predictor export" in capsys.readouterr().err

    model = load_predictor(str(exp))
    again = save_pretrained(model, str(tmp_path / "again"))  # keeps what it was trained on
    assert read_export_config(again)["trained_on"] == read_export_config(exp)["trained_on"]
    push_to_hub(model, "my-org/pred2", api=(api2 := FakeApi()))
    assert api2.calls[-1][1] == "my-org/pred2"
    assert api2.files["model.safetensors"] == (exp / "model.safetensors").read_bytes()


def test_card_snippet_runs_against_a_cached_repo_id(tmp_path):
    # the card's "how to use" block, as a hub user copies it: the committed export under a repo id,
    # the reference MLLM standing in for the base model, an image in the working folder
    from PIL import Image

    shipped = ROOT / "checkpoints" / "predictor-reference"
    hub = tmp_path / "hub"
    _cache_repo(hub, "my-org/reference", {REV_A: shipped}, {"main": REV_A})
    api = FakeApi()
    push_export(shipped, "my-org/reference", base_model=str(ROOT / "checkpoints" / "reference-qwen2vl"), api=api)
    text = api.files["README.md"].decode()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    Image.open(ROOT / "docs" / "example.png").save(tmp_path / "example.jpg")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "of 64 visual tokens" in r.stdout


def test_eval_takes_a_hub_id_for_the_predictor(tmp_path, monkeypatch):
    # eval.py predictor=org/name: the export comes from the cache; the settings guard fingerprints the snapshot
    from evaluation import EvalSettings, run_eval

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _cache_repo(tmp_path / "hub", "my-org/reference", {REV_A: ROOT / "checkpoints" / "predictor-reference"},
                {"main": REV_A})
    res = run_eval(EvalSettings(model={"adapter": "qwen2_vl", "path": str(ROOT / "checkpoints" / "reference-qwen2vl")},
                                source={"name": "synthetic_scenes", "num_items": 2, "split": "test"},
                                predictor="my-org/reference", methods=["predictor"], keeps=[1.0, 0.25], max_items=2,
                                out=str(tmp_path / "eval"), swap_keep=None, figures=0, progress=False))
    assert res["predictor"] == "my-org/reference" and res["results"]["predictor"]["0.25"]["n"] == 2
