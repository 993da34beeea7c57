"""checkpoints/predictor-reference: the committed export of the README's main command. It must load, and
it must belong to the committed reference MLLM: when that model changes, the export is regenerated
(python -m data_gen && python train.py) in the same change."""
import json
from pathlib import Path

from data_gen.build import model_fingerprint
from predictor import load_predictor, read_export_config

ROOT = Path(__file__).resolve().parents[1]
EXPORT, MLLM = ROOT / "checkpoints" / "predictor-reference", ROOT / "checkpoints" / "reference-qwen2vl"


def test_shipped_export_loads_and_belongs_to_the_reference_mllm():
    model, cfg = load_predictor(EXPORT), read_export_config(EXPORT)
    t = cfg["trained_on"]
    assert cfg["modality"] == model.modality == "image"
    assert t["model_id"] == "checkpoints/reference-qwen2vl" and t["adapter"] == "qwen2_vl" and t["explainer"] == "gae"
    labeller = t["labeller"]
    assert labeller["model_fingerprint"] == model_fingerprint(str(MLLM)), (
        "the reference MLLM changed since the export was made: regenerate it with python -m data_gen && python train.py")
    mllm = json.loads((MLLM / "config.json").read_text())
    heads = mllm.get("text_config", mllm).get("num_attention_heads")
    assert model.config.num_heads == heads and t["n_v_min"] == t["n_v_max"] == 64
    assert cfg["training"]["seed"] == 0 and cfg["metrics"]["recall@25"] > cfg["metrics"]["attn_recall@25"]
    assert (EXPORT / "model.safetensors").stat().st_size < 10 * 2**20  # the repository's limit for weights
