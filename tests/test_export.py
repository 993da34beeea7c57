"""Export folder: config + safetensors + card, loaded in a fresh process without transformers/lightning."""
import json
import subprocess
import sys

import pytest
import torch

from predictor.export import load_predictor, read_export_config, save_predictor
from predictor.model import PredictorConfig, RelevancePredictor


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
    for f in out.iterdir():
        assert b"\x80\x04" not in f.read_bytes()[:2]  # no pickle protocol header
    load_predictor(out)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="python train.py"):
        load_predictor(tmp_path)
    out = save_predictor(RelevancePredictor(PredictorConfig(widths=[8])), tmp_path / "exp")
    cfg = json.loads((out / "config.json").read_text())
    cfg["export_version"] = 999
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="re-export"):
        read_export_config(out)
