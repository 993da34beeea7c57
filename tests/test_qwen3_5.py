"""Qwen3.5 specifics: a hybrid decoder (Gated DeltaNet linear attention before the first softmax layer), the
probe layer it moves the predictor's input to, and the recurrent state through pruned generation.

The family-wide behaviour (positions, grids, teacher-forced pass, explainers, runtime, kernels) is covered by
the parametrized tests, whose FAMILIES include qwen3_5 (tiny model: layers linear, softmax, linear, softmax).
"""
import json
import tarfile
from pathlib import Path

import pytest
import torch

from models import ADAPTER_OF, tiny_image, tiny_models, tiny_video  # noqa: F401  (fixture)
from predictor.adapters import Adapter, load_adapter
from predictor.adapters.layer0 import instruction_attention
from predictor.runtime import left_pad, make_context, make_method, prune_context, pruned_generate

INSTRUCTION = "What shape is the red object?"


@pytest.fixture(scope="module")
def qwen35(tiny_models):
    adapter = load_adapter("qwen3_5", str(tiny_models["qwen3_5"]))
    return adapter, adapter.prepare(tiny_image(), INSTRUCTION)


class _Stack(Adapter):
    """An adapter around a bare decoder stack (no vision): the probe layer and its q/k path alone."""

    name = "stack_stub"
    load = prepare = generate = teacher_forced = embed = None

    def __init__(self, lm):
        super().__init__(lm, None, "stub")

    def language_model(self):
        return self.model


def _qwen3_5_text(**overrides):
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.Qwen3_5TextConfig(vocab_size=50, hidden_size=64, intermediate_size=64, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
                               linear_key_head_dim=16, linear_value_head_dim=16, attn_implementation="eager",
                               **overrides)
    lm = tf.Qwen3_5TextModel(cfg).eval()
    with torch.no_grad():  # trained norms are not at their zero init
        for p in lm.parameters():
            if p.ndim == 1:
                p.uniform_(-0.5, 0.5)
        for layer in lm.layers:  # linear layers that move the hidden states as much as a trained one's
            if hasattr(layer, "linear_attn"):
                layer.linear_attn.out_proj.weight.normal_(0.0, 0.3)
    return lm


def test_probe_layer_is_the_first_softmax_layer_of_the_config():
    """Qwen3.5's default layout (full_attention_interval 4, as Qwen3.5-27B): layers 0-2 linear, 3 softmax."""
    lm = _qwen3_5_text(num_hidden_layers=8)
    assert lm.config.layer_types[:4] == ["linear_attention"] * 3 + ["full_attention"]
    stack = _Stack(lm)
    assert stack.probe_layer == 3 and sorted(stack.attention_layers().values()) == [3, 7]
    moved = _qwen3_5_text(layer_types=["linear_attention", "full_attention"], num_hidden_layers=2)
    assert _Stack(moved).probe_layer == 1


def test_tiny_model_probe_layer(qwen35):
    adapter, _ = qwen35
    assert adapter.model.config.text_config.layer_types[:2] == ["linear_attention", "full_attention"]
    assert adapter.probe_layer == 1


def test_probe_attention_runs_the_linear_layers_first():
    """At Qwen3.5-27B's layout the instruction rows of layer 3 equal the eager forward's, which runs three
    Gated DeltaNet layers first; layer 3's q/k of the raw embeddings (skipping them) would be other numbers."""
    lm = _qwen3_5_text(num_hidden_layers=4)
    embeds = torch.randn(1, 24, 64)
    pos = torch.arange(24)[None].expand(3, 1, 24)  # M-RoPE ids, text-like
    rows, cols = torch.tensor([18, 20, 23]), torch.arange(4, 16)
    heads, mean = instruction_attention(_Stack(lm), embeds, pos, rows, cols)
    with torch.no_grad():
        out = lm(inputs_embeds=embeds, position_ids=pos, output_attentions=True)
    assert len(out.attentions) == 1  # the one softmax layer
    expect = out.attentions[0][0][:, rows][:, :, cols].mean(1)
    torch.testing.assert_close(heads, expect, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mean, expect.mean(0), atol=1e-6, rtol=1e-5)

    from predictor.adapters.layer0 import decoder_qk

    class Skipping(_Stack):  # the probe layer's q/k straight from the embeddings
        def layer0_qk(self, e, p, q, k):
            lm_ = self.language_model()
            saved = lm_.layers
            lm_.layers = torch.nn.ModuleList([saved[3]])
            try:
                return decoder_qk(lm_, e, p, q, k, layer=0)
            finally:
                lm_.layers = saved
    skipped, _ = instruction_attention(Skipping(lm), embeds, pos, rows, cols)
    assert (skipped - expect).abs().max() > 1e-3


def _own_generate(adapter, prepared, n: int) -> list[int]:
    with torch.no_grad():
        out = adapter.model.generate(**prepared.inputs, max_new_tokens=n, do_sample=False)
    return out[0, prepared.seq_len:].tolist()


@pytest.mark.parametrize("video", [False, True])
def test_keep_all_equals_the_models_own_generate(qwen35, video):
    """From pixels through the model's own generate (its cache: keys/values and recurrent states) vs from
    our embeddings with explicit positions."""
    adapter, p = qwen35
    if video:
        p = adapter.prepare(None, INSTRUCTION, video=tiny_video(), fps=2.0)
    out = pruned_generate(adapter, p, make_method("attention"), keep=1.0, max_new_tokens=5)[0]
    ref = _own_generate(adapter, p, 5)
    k = out.answer_ids.numel()
    assert 0 < k and out.answer_ids.tolist() == ref[:k] and (k == 5 or ref[k] in adapter._stop_ids())


def test_pruned_generation_equals_greedy_decoding_without_a_cache(qwen35):
    """The cache (softmax layers' keys/values, linear layers' convolution and recurrent states) carries a
    pruned, left-padded batch correctly: the cached answer equals greedy decoding that re-runs the whole
    pruned sequence each step (no cache at all), positions continuing after the last prompt token."""
    adapter, p = qwen35
    ctx = make_context(adapter, p)
    short = adapter.prepare(tiny_image(56, 56, seed=1), "what colour is the circle")
    pruned = [prune_context(ctx, make_method("attention"), keep=0.5)[0],
              prune_context(make_context(adapter, short), make_method("attention"), keep=0.5)[0]]
    embeds, mask, pos = left_pad(pruned)
    assert (mask == 0).any()  # one row is left-padded
    n = 4
    cached = adapter.generate_from_embeds(embeds, mask, pos, max_new_tokens=n)
    emb_layer = adapter.model.get_input_embeddings()
    for b in range(2):
        e, m, q = embeds[b:b + 1], mask[b:b + 1], pos[:, b:b + 1]
        keep = m[0].bool()
        e, q = e[:, keep], q[..., keep]
        ids = []
        for _ in range(n):
            with torch.no_grad():
                logits = adapter.model(inputs_embeds=e, position_ids=q, use_cache=False).logits[0, -1]
            t = int(logits.argmax())
            if t in adapter._stop_ids():
                break
            ids.append(t)
            e = torch.cat([e, emb_layer(torch.tensor([[t]]))], 1)
            q = torch.cat([q, q[..., -1:] + 1], -1)
        assert cached[b].tolist() == ids, b


def test_export_for_another_probe_layer_is_refused(qwen35, tiny_models, tmp_path):
    """An export records the layer its features came from (trained_on.probe_layer; absent: 0, every export made
    before hybrid decoders); scoring on an adapter that reads another layer is refused by name."""
    from predictor.config import PredictorConfig
    from predictor.export import save_predictor
    from predictor.model import RelevancePredictor
    from predictor import load_predictor

    adapter, p = qwen35
    net = RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn"]))
    old = load_predictor(save_predictor(net, tmp_path / "old", trained_on={"modality": "image"}))
    with pytest.raises(ValueError, match=r"decoder layer 0 \(trained_on.probe_layer\).*'qwen3_5'.*reads layer 1"):
        pruned_generate(adapter, p, make_method("predictor", predictor=old), keep=0.5, max_new_tokens=1)
    ours = load_predictor(save_predictor(net, tmp_path / "new", trained_on={"modality": "image", "probe_layer": 1}))
    assert pruned_generate(adapter, p, make_method("predictor", predictor=ours), keep=0.5, max_new_tokens=1)
    qwen2 = load_adapter("qwen2_vl", str(tiny_models["qwen2_vl"]))
    with pytest.raises(ValueError, match=r"decoder layer 1 .*'qwen2_vl'.*reads layer 0"):
        pruned_generate(qwen2, qwen2.prepare(tiny_image(), INSTRUCTION), make_method("predictor", predictor=ours),
                        keep=0.5, max_new_tokens=1)
    assert pruned_generate(qwen2, qwen2.prepare(tiny_image(), INSTRUCTION), make_method("predictor", predictor=old),
                           keep=0.5, max_new_tokens=1)


CHAIN = [("qwen3_5", 128, 1)] + ([("llava_onevision1_5", 112, 0)] if "llava_onevision1_5" in ADAPTER_OF else [])


@pytest.mark.parametrize("family,px,probe", CHAIN)
def test_chain_data_gen_train_eval_lmms_demo(family, px, probe, tiny_models, tmp_path, capsys):
    """The pipeline on the tiny Qwen3.5 (and LLaVA-OneVision-1.5 where transformers has it): data_gen labels
    synthetic scenes in the adapter's cells (gae through the hybrid decoder; shards record the probe layer), train
    exports a predictor that records it, eval prunes with it beside the baselines, and the demo runs it."""
    from hydra import compose, initialize_config_dir

    from data_gen.run import main as data_gen
    from evaluation import EvalSettings, run_eval
    from predictor.export import read_export_config
    from predictor.runtime.demo import main as demo
    from predictor.training.train import train

    model = {"adapter": family, "path": str(tiny_models[family]), "dtype": "float32", "device": "cpu"}
    shards = tmp_path / "shards"
    summary = data_gen(model=model, source={"name": "synthetic_scenes", "sizes": [[px, px]]},
                       explainer={"name": "gae"},
                       options={"out": str(shards), "max_items": 6, "correctness": "none", "max_new_tokens": 2,
                                "progress": False})
    assert summary.written == 6
    metas = []
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as t:
            metas += [json.load(t.extractfile(m)) for m in t.getmembers() if m.name.endswith("meta.json")]
    assert len(metas) == 6 and {m["probe_layer"] for m in metas} == {probe} and {m["adapter"] for m in metas} == {family}

    conf = Path(__file__).resolve().parents[1] / "conf" / "train"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            f"data.shards={shards}", "model.widths=[4,8]", "logger=none", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "data.val_fraction=0.0", f"run_dir={tmp_path}/run",
            f"export_dir={tmp_path}/exp"])
    export = train(cfg)
    assert read_export_config(export)["trained_on"]["probe_layer"] == probe

    res = run_eval(EvalSettings.from_dict(dict(
        model={**model, "attn_implementation": "fp32_capture"}, source={"name": "synthetic_scenes", "split": "test",
                                                                        "sizes": [[px, px]]},
        explainer={"name": "gae"}, predictor=str(export), out=str(tmp_path / "eval"),
        methods=["predictor", "oracle", "attention", "random"], keeps=[1.0, 0.25], max_items=2, max_new_tokens=2,
        correctness="none", figures=0, progress=False, timing=False, fidelity={"shards": None},
        generalisation=None)))
    for m in ("predictor", "oracle", "attention", "random"):
        row = res["results"][m]["0.25"]
        assert row["n"] == 2 and row["visual_tokens"] == 4 and row["object_kept"] is not None

    assert demo(["--model", family, "--model-path", str(tiny_models[family]), "--predictor", str(export),
                 "--max-new-tokens", "2", "--out", str(tmp_path / "demo.png")]) == 0
    assert "kept " in capsys.readouterr().out and (tmp_path / "demo.png").exists()


REF35 = Path(__file__).resolve().parents[1] / "checkpoints" / "reference-qwen3_5"


def test_committed_hybrid_reference_model(tmp_path):
    """checkpoints/reference-qwen3_5: small, documented by the card its recipe writes, a hybrid decoder whose probe
    layer is decoder layer 1, answering held-out scenes at its recorded accuracy."""
    from reference_mllm.train.card import model_card
    from test_reference_model import MARGIN, _accuracy, _heldout

    record = json.loads((REF35 / "training.json").read_text())
    size = sum(p.stat().st_size for p in REF35.rglob("*") if p.is_file())
    assert size < 10 * 2**20 and (REF35 / "README.md").read_text() == model_card(record)
    assert record["config"]["arch"] == "qwen3_5" and record["heldout_accuracy"]["224x224"] >= 0.95
    adapter = load_adapter("qwen3_5", str(REF35))
    assert adapter.probe_layer == 1 and adapter.model.config.text_config.layer_types[0] == "linear_attention"
    acc = _accuracy(adapter, _heldout(record, [224, 224], 32))
    assert acc >= record["heldout_accuracy"]["224x224"] - MARGIN, acc


def test_reference_recipe_arch_option_is_validated():
    from reference_mllm.train.config import RefTrainConfig, qwen3_5_config

    with pytest.raises(ValueError, match="arch='gpt'"):
        RefTrainConfig(arch="gpt").validate()
    cfg = qwen3_5_config()
    cfg.validate()
    assert cfg.text["layer_types"][:2] == ["linear_attention", "full_attention"]
    with pytest.raises(ValueError, match="text: 2 layers x 2 heads"):  # 4 layers, 2 of them softmax: too few
        qwen3_5_config(text={**cfg.text, "layer_types": ["linear_attention"] * 2 + ["full_attention"] * 2}).validate()
