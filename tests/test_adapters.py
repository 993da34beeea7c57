import pytest
import torch

from models import ADAPTER_OF, FAMILIES, tiny_image, tiny_models  # noqa: F401
from predictor.adapters import ADAPTERS, get_adapter, load_adapter
from predictor.schema import _validate_segments

INSTRUCTION = "What shape is the red object?"


@pytest.fixture(scope="module")
def loaded(tiny_models):
    """family -> (adapter, prepared) for the tiny models."""
    out = {}
    for family in FAMILIES:
        adapter = load_adapter(ADAPTER_OF[family], str(tiny_models[family]))
        out[family] = (adapter, adapter.prepare(tiny_image(), INSTRUCTION))
    return out


def test_every_registered_adapter_has_a_tiny_model():
    get_adapter("qwen2_vl")  # imports the family modules
    assert set(ADAPTERS.names()) == set(ADAPTER_OF.values())


def test_unknown_adapter_lists_available():
    with pytest.raises(KeyError, match="available: llava_onevision, qwen2_vl"):
        get_adapter("vila")


def test_load_errors(tiny_models, tmp_path):
    with pytest.raises(FileNotFoundError, match="model.path"):
        load_adapter("qwen2_vl", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="model_type='llava_onevision'"):
        load_adapter("qwen2_vl", str(tiny_models["llava_onevision"]))


@pytest.mark.parametrize("family", FAMILIES)
def test_positions_grid_and_segments(family, loaded):
    adapter, p = loaded[family]
    ids = p.inputs["input_ids"][0]
    tok = adapter.tokenizer
    assert torch.equal(p.visual_positions, (ids == adapter.image_token_id).nonzero().flatten())
    assert tok.convert_ids_to_tokens(ids[p.instruction_positions]) == ["what", "shape", "is", "the", "red", "object", "?"]
    # the instruction sits right after the media in the user turn; nothing of the template or system prompt
    last_visual = int(p.visual_positions[-1])
    # Qwen: <|vision_end|> then the text; LLaVA-OV: "\n" then the text
    assert int(p.instruction_positions[0]) == last_visual + 2
    assert tok.convert_ids_to_tokens(int(ids[int(p.instruction_positions[-1]) + 1])) == "<|im_end|>"
    t, h, w = p.grid
    assert t * h * w == p.num_visual
    if family == "llava_onevision":
        _validate_segments("k", p.segments, p.num_visual)
        assert p.segments[0]["kind"] == "base" and p.segments[0]["grid"] == [1, 4, 4]
    else:
        assert p.grid == (1, 3, 4) and p.segments is None  # 84 x 112 px / 28 px per token


def test_empty_instruction_is_a_value_error(loaded):
    adapter, _ = loaded["qwen2_vl"]
    with pytest.raises(ValueError, match="empty instruction"):
        adapter.prepare(tiny_image(), "  ")


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_and_teacher_forced_match_the_model(family, loaded):
    adapter, p = loaded[family]
    ans, text = adapter.generate(p, max_new_tokens=4)
    assert ans.ndim == 1 and ans.numel() <= 4 and isinstance(text, str)
    ans = torch.tensor([5, 7, 9])
    out = adapter.teacher_forced(p, ans)
    n = p.seq_len + 3
    assert out.logits.shape[:2] == (1, n) and len(out.attentions) == adapter.num_layers
    assert out.attentions[0].shape[-2:] == (n, n) and out.attentions[0].dtype == torch.float32
    inputs = dict(p.inputs)
    inputs["input_ids"] = torch.cat([p.inputs["input_ids"], ans[None]], 1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, 3, dtype=torch.int)], 1)
    with torch.no_grad():
        ref = adapter.model(**inputs).logits
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-4)
    short = adapter.teacher_forced(p, ans, output_attentions=False, answer_logits_only=True)
    torch.testing.assert_close(short.logits, ref[:, p.seq_len - 1:n - 1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_layer0_attention_matches_plain_eager_forward(family, loaded, tiny_models):
    adapter, p = loaded[family]
    per_head, mean = adapter.layer0_attention(p)
    n_heads = adapter.model.config.text_config.num_attention_heads
    assert per_head.shape == (n_heads, p.num_visual) and mean.shape == (p.num_visual,)
    eager = type(adapter).load(str(tiny_models[family]), attn_implementation="eager")
    with torch.no_grad():
        att = eager.model(**p.inputs, output_attentions=True).attentions[0][0]  # (H, S, S)
    expect = att[:, p.instruction_positions][:, :, p.visual_positions].mean(1)
    torch.testing.assert_close(per_head, expect, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mean, expect.mean(0), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_tower_runs_once_per_prompt(family, loaded, monkeypatch):
    """Label generation embeds a prompt several times (layer-0 attention, the explainer's forward):
    the vision features are computed once and reused, with the same result as a fresh prompt."""
    adapter, _ = loaded[family]
    calls = []
    inner = adapter.model.model.get_image_features
    monkeypatch.setattr(adapter.model.model, "get_image_features",
                        lambda *a, **k: calls.append(1) or inner(*a, **k))
    p = adapter.prepare(tiny_image(), INSTRUCTION)
    first = adapter.embed(p)
    adapter.layer0_attention(p)
    with torch.enable_grad():
        out = adapter.teacher_forced(p, torch.tensor([5, 7]), output_attentions=False,
                                     inputs_embeds=adapter.embed(p, torch.tensor([5, 7])).requires_grad_(True))
        out.logits.sum().backward()  # gradients reach the embeddings; none need the tower
    assert len(calls) == 1
    fresh = adapter.prepare(tiny_image(), INSTRUCTION)
    torch.testing.assert_close(adapter.embed(fresh), first, atol=0, rtol=0)
    assert len(calls) == 2


@pytest.mark.parametrize("masked", [False, True])
def test_recompute_attention_matches_sdpa_and_saves_no_mask_per_layer(masked):
    """Recompute mode, 3 layers sharing one mask (as transformers passes it): outputs and gradients equal
    SDPA's, and what is saved for backward is q, k, v per layer plus the caller's mask once, never an
    fp32 (Q, K) mask per layer. masked=False: None (causal, the queries the last Q of K positions)."""
    import torch.nn.functional as F

    from predictor.adapters.attention import _repeat_kv, attention_forward, capture

    torch.manual_seed(0)
    b, h, h_kv, q_len, k_len, d = 2, 4, 2, 5, 7, 8
    causal = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)
    mask = causal.expand(b, 1, q_len, k_len).clone() if masked else None
    if masked:
        mask[1, :, :, :2] = False  # left padding in row 1
    modules = [torch.nn.Identity() for _ in range(3)]
    q = torch.randn(b, h, q_len, d, requires_grad=True)
    k, v = (torch.randn(b, h_kv, k_len, d, requires_grad=True) for _ in range(2))
    saved: dict[int, tuple] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), t.dtype, tuple(t.shape[-2:]))
        return t

    with capture({id(m): i for i, m in enumerate(modules)}, mode="recompute"), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ours = [attention_forward(m, q, k, v, mask)[0] for m in modules]  # (B, Q, H, d) each
    grads = torch.autograd.grad(sum(o.square().sum() for o in ours), (q, k, v))
    ref = F.scaled_dot_product_attention(q, _repeat_kv(k, 2), _repeat_kv(v, 2), attn_mask=mask if masked else causal)
    ref_grads = torch.autograd.grad(3 * ref.square().sum(), (q, k, v))
    for o in ours:
        torch.testing.assert_close(o, ref.transpose(1, 2), atol=1e-6, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    squares = [s for s in saved.values() if s[2] == (q_len, k_len)]
    assert squares == ([(b * q_len * k_len, torch.bool, (q_len, k_len))] if masked else [])
