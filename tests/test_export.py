"""Export folder: config + safetensors + card, loaded in a fresh process without transformers/lightning."""
import json
import subprocess
import sys

import pytest
import torch

from predictor import load_predictor
from predictor.export import read_export_config, save_predictor
from predictor.config import PredictorConfig
from predictor.model import RelevancePredictor


def test_export_then_load_in_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = RelevancePredictor(PredictorConfig(widths=[8, 16], inputs=["attn", "coords"])).eval()
    out = save_predictor(model, tmp_path / "exp", trained_on={"model_id": "m", "n_v_min": 64},
                         metrics={"recall@25": 0.5}, training={"epochs": 3})
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["trained_on"]["model_id"] == "m" and cfg["metrics"]["recall@25"] == 0.5
    assert "recall@25" in (out / "README.md").read_text()
    x = torch.randn(2, 4, 12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    expected = model(x, mask)
    torch.save({"x": x, "mask": mask, "p": expected}, tmp_path / "io.pt")
    code = f"""
import sys, torch
from predictor import load_predictor
m = load_predictor({str(out)!r})
d = torch.load({str(tmp_path / 'io.pt')!r})
torch.testing.assert_close(m(d['x'], d['mask']), d['p'])
bad = [k for k in ('transformers', 'lightning', 'pytorch_lightning', 'webdataset', 'wandb') if k in sys.modules]
assert not bad, bad
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_no_pickle_and_overwrite(tmp_path):
    model = RelevancePredictor(PredictorConfig(widths=[8]))
    out = save_predictor(model, tmp_path / "exp")
    save_predictor(model, tmp_path / "exp")  # replacing an existing export works
    assert not list(tmp_path.glob(".exp*"))  # no temp folders left behind
    assert_plain_data(out)
    load_predictor(out)


DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def assert_plain_data(folder):
    """Every file of an export is data read without unpickling: JSON config, UTF-8 card, and a
    safetensors file whose JSON header's tensors fill the file to its last byte (room for nothing else)."""
    files = {f.name: f.read_bytes() for f in folder.iterdir()}
    # parsed, not sniffed: a safetensors header of 640 bytes starts with 0x80 0x02, as a pickle does
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"], sorted(files)
    assert isinstance(json.loads(files["config.json"].decode("utf-8")), dict)
    assert "\x00" not in files["README.md"].decode("utf-8")
    blob = files["model.safetensors"]
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    end = 0
    for key, t in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                         key=lambda kv: kv[1]["data_offsets"]):
        size = DTYPE_BYTES[t["dtype"]] * int(torch.Size(t["shape"]).numel())
        assert t["data_offsets"] == [end, end + size], key  # contiguous, each exactly its tensor's bytes
        end += size
    assert end > 0 and 8 + n + end == len(blob), "bytes after the last tensor"


@pytest.mark.parametrize("swap", ["torch_save_weights", "pickled_config", "pickle_after_tensors", "extra_file"])
def test_the_no_pickle_check_can_fail(tmp_path, swap):
    """Issue 12 item 8: the old check read two bytes for protocol 4 only; torch.save (a zip) passed it."""
    import pickle

    model = RelevancePredictor(PredictorConfig(widths=[8]))
    out = save_predictor(model, tmp_path / "exp")
    if swap == "torch_save_weights":
        torch.save(model.state_dict(), out / "model.safetensors")
    elif swap == "pickled_config":
        (out / "config.json").write_bytes(pickle.dumps(json.loads((out / "config.json").read_text()), protocol=2))
    elif swap == "pickle_after_tensors":
        with open(out / "model.safetensors", "ab") as f:
            f.write(pickle.dumps({"x": 1}))
    else:
        torch.save(model.state_dict(), out / "weights.pt")
    with pytest.raises((AssertionError, ValueError)):  # ValueError: JSON or UTF-8 that does not decode
        assert_plain_data(out)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="python train.py"):
        load_predictor(tmp_path)
    out = save_predictor(RelevancePredictor(PredictorConfig(widths=[8])), tmp_path / "exp")
    cfg = json.loads((out / "config.json").read_text())
    cfg["export_version"] = 999
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="re-export"):
        read_export_config(out)


def _tamper(out, **fields):
    """Rewrite the export's config.json with `fields` set (predictor.<name> for the predictor section)."""
    cfg = json.loads((out / "config.json").read_text())
    for k, v in fields.items():
        section, _, name = k.rpartition(".")
        (cfg[section] if section else cfg)[name] = v
    (out / "config.json").write_text(json.dumps(cfg))


def test_tampered_widths_refused_before_any_allocation(tmp_path):
    out = save_predictor(RelevancePredictor(PredictorConfig(widths=[8, 16, 16])), tmp_path / "exp")
    _tamper(out, **{"predictor.widths": [200000] * 3})  # 160 GB of weights if the module were built
    code = f"""
import resource
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a regression fails here, not the machine
from predictor import load_predictor
try:
    load_predictor({str(out)!r})
except ValueError as e:
    print(e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    msg = r.stdout
    assert "config.json" in msg and "model.safetensors" in msg and "widths" in msg, msg
    assert "(200000, 1, 1)" in msg and "(8, 1, 1)" in msg, msg  # expected and found shapes


BAD_PREDICTOR_FIELDS = [
    ("widths", "abc"), ("widths", [0, 8]), ("widths", [8.5]), ("widths", []), ("widths", [True]),
    ("kernel_size", True), ("kernel_size", 4), ("kernel_size", "5"), ("dropout", 2), ("dropout", "x"),
    ("norm", None), ("activation", [1]), ("arch", {"a": 1}), ("inputs", "attn"), ("inputs", [3]),
    ("num_heads", -1), ("num_heads", 1.5),
]


@pytest.mark.parametrize("name,value", BAD_PREDICTOR_FIELDS)
def test_bad_predictor_field_names_file_field_and_found(tmp_path, name, value):
    out = save_predictor(RelevancePredictor(PredictorConfig(widths=[8])), tmp_path / "exp")
    _tamper(out, **{f"predictor.{name}": value})
    with pytest.raises(ValueError) as e:
        load_predictor(out)
    msg = str(e.value)
    assert "config.json" in msg and repr(name) in msg and "expected" in msg and "found" in msg, msg


@pytest.mark.parametrize("fields,word", [({"schema_version": 99}, "schema_version"),
                                         ({"schema_version": None}, "schema_version"),
                                         ({"predictor": "conv1d"}, "predictor"),
                                         ({"predictor.depth": 3}, "depth")])
def test_bad_config_sections_refused(tmp_path, fields, word):
    out = save_predictor(RelevancePredictor(PredictorConfig(widths=[8])), tmp_path / "exp")
    _tamper(out, **fields)
    with pytest.raises(ValueError, match=word) as e:
        read_export_config(out)
    assert "config.json" in str(e.value)


def test_config_not_json_or_weights_not_matching(tmp_path):
    out = save_predictor(RelevancePredictor(PredictorConfig(widths=[8])), tmp_path / "exp")
    (out / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json.*JSON"):
        load_predictor(out)
    other = save_predictor(RelevancePredictor(PredictorConfig(widths=[16])), tmp_path / "other")
    save_predictor(RelevancePredictor(PredictorConfig(widths=[8])), out)
    (out / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"blocks\.0\.pointwise\.weight.*\(8, 1, 1\).*\(16, 1, 1\)"):
        load_predictor(out)
    (out / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_predictor(out)


def test_export_is_world_readable_under_umask_077(tmp_path):
    import os
    import stat

    old = os.umask(0o077)
    try:
        out = save_predictor(RelevancePredictor(PredictorConfig(widths=[8])), tmp_path / "exp")
        save_predictor(RelevancePredictor(PredictorConfig(widths=[8])), out)  # the replace path too
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {
        "config.json": 0o644, "model.safetensors": 0o644, "README.md": 0o644}


@pytest.mark.parametrize("arch", ["conv2d", "conv3d"])
def test_grid_arch_export_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    model = RelevancePredictor(PredictorConfig(arch=arch, widths=[8, 16], kernel_size=3)).eval()
    out = save_predictor(model, tmp_path / "exp", trained_on={"modality": "video"})
    loaded = load_predictor(out)
    assert loaded.config == model.config and loaded.modality == "video"
    x, mask, grid = torch.randn(2, 1, 24), torch.ones(2, 24, dtype=torch.bool), torch.tensor([[2, 3, 4], [3, 2, 4]])
    torch.testing.assert_close(loaded(x, mask, grid), model(x, mask, grid))
