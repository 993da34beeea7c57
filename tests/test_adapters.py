import pytest
import torch

from models import ADAPTER_OF, FAMILIES, NEWER, interface_only, tiny_image, tiny_models, tiny_video  # noqa: F401
from predictor.adapters import ADAPTERS, Adapter, get_adapter, load_adapter
from predictor.adapters.attention import capture
from predictor.adapters.layer0 import instruction_attention
from predictor.schema import _validate_segments

INSTRUCTION = "What shape is the red object?"
QWEN3_STYLE = ("qwen3_vl", "qwen3_5")  # 32 px visual tokens, timestamped video frames


def _words(adapter, ids) -> list[str]:
    """Each token id as text (a word-level or byte-level BPE tokenizer alike)."""
    return [adapter.tokenizer.decode([int(i)]).strip().lower() for i in ids]


def _assert_eager_layer0(per_head, mean, adapter_cls, path, p):
    """(per_head, mean) equal the instruction-to-visual block of the probe layer (the first softmax-attention
    layer: layer 0 but in a hybrid decoder) of an eager forward of the model."""
    eager = adapter_cls.load(str(path), attn_implementation="eager")
    with torch.no_grad():
        atts = eager.model(**p.inputs, output_attentions=True).attentions
    assert len(atts) == len(eager.attention_layers())  # the softmax layers only: the first is the probe layer
    att = atts[0][0]  # (H, S, S)
    expect = att[:, p.instruction_positions][:, :, p.visual_positions].mean(1)
    torch.testing.assert_close(per_head, expect, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mean, expect.mean(0), atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def loaded(tiny_models):
    """family -> (adapter, prepared) for the tiny models."""
    out = {}
    for family in FAMILIES:
        adapter = load_adapter(ADAPTER_OF[family], str(tiny_models[family]))
        out[family] = (adapter, adapter.prepare(tiny_image(), INSTRUCTION))
    return out


@pytest.fixture(scope="module")
def loaded_bf16(tiny_models):
    out = {}
    for family in FAMILIES:
        adapter = load_adapter(ADAPTER_OF[family], str(tiny_models[family]), dtype="bfloat16")
        out[family] = (adapter, adapter.prepare(tiny_image(), INSTRUCTION))
    return out


def captured_layer0(adapter, prepared) -> tuple[torch.Tensor, torch.Tensor]:
    """Test oracle for the predictor's input: the model's own layer-0 forward (its layer norm, projections
    and rotary, in the model's dtype), probabilities recorded in fp32, stopped after layer 0."""
    probe = adapter.probe_layer
    with torch.no_grad(), capture(adapter.attention_layers(), mode="record", stop_after=probe) as cap:
        adapter.language_model()(inputs_embeds=adapter.embed(prepared), use_cache=False, attention_mask=None,
                                 position_ids=adapter.position_ids(prepared))
    probs = cap.probs[probe][0]  # (H, S, S)
    per_head = probs[:, prepared.instruction_positions][:, :, prepared.visual_positions].mean(1)  # (H, N_v)
    return per_head.float().cpu(), per_head.mean(0).float().cpu()


def test_every_registered_adapter_has_a_tiny_model():
    get_adapter("qwen2_vl")  # imports the family modules
    absent = {f for f in NEWER if f not in ADAPTER_OF}  # its transformers class is newer than the installed release
    assert set(ADAPTERS.names()) == set(ADAPTER_OF.values()) | absent


def test_unknown_adapter_lists_available():
    with pytest.raises(KeyError, match="available: llava_onevision, llava_onevision1_5, qwen2_vl, qwen3_5, qwen3_vl, vila"):
        get_adapter("vila2")


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
    assert torch.equal(p.visual_positions.sort().values, (ids == adapter.image_token_id).nonzero().flatten())
    assert _words(adapter, ids[p.instruction_positions]) == ["what", "shape", "is", "the", "red", "object", "?"]
    _assert_instruction_follows_media(adapter, p)
    t, h, w = p.grid
    assert t * h * w == p.num_visual
    if family == "llava_onevision":
        _validate_segments("k", p.segments, p.num_visual)
        assert p.segments[0]["kind"] == "base" and p.segments[0]["grid"] == [1, 4, 4]
    elif family == "vila":  # resized to 70 x 70 px: 5 x 5 patches padded to 6 x 6, merged 2 x 2
        assert p.grid == (1, 3, 3) and p.segments is None
        # the projector emits the merged grid column by column; visual order is row-major
        assert (p.visual_positions - p.visual_positions.min()).tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]
    else:
        assert p.grid == (1, 3, 4) and p.segments is None  # 84 x 112 px / 28 px per token


def _assert_instruction_follows_media(adapter, p) -> None:
    """The instruction is the processor's own tokens of the user's text, right after the media: only the
    chat template's markup (special tokens, whitespace) lies between the last visual token and it, and the
    turn ends after it. Read from the processor's output, not a fixed gap: templates change between
    transformers releases (Qwen3-VL's video markup lost a token in 5.25)."""
    ids, tok = p.inputs["input_ids"][0], adapter.tokenizer
    first, last = int(p.instruction_positions[0]), int(p.instruction_positions[-1])
    assert torch.equal(p.instruction_positions, torch.arange(first, last + 1))
    between = ids[int(p.visual_positions.max()) + 1:first].tolist()
    assert between, "no markup between the media and the instruction"
    markup = [t for t in between if t in tok.all_special_ids or not tok.decode([t]).strip()]
    assert markup == between, tok.convert_ids_to_tokens(between)
    # the turn ends: Qwen's and LLaVA-OneVision's end-of-turn token; VILA1.5's vicuna_v1 " ASSISTANT:"
    assert tok.convert_ids_to_tokens(int(ids[last + 1])) == ("assistant" if adapter.name == "vila" else "<|im_end|>")


@pytest.fixture(scope="module")
def loaded_video(loaded):
    """family -> (adapter, prepared video prompt of `tiny_video()`: 8 frames of 112 x 84 px), on first use."""
    cache = {}

    class Lazy(dict):
        def __missing__(self, family):
            adapter = loaded[family][0]
            cache[family] = (adapter, adapter.prepare(None, INSTRUCTION, video=tiny_video()))
            return cache[family]
    return Lazy()


@pytest.mark.parametrize("family", FAMILIES)
def test_video_positions_grid_and_segments(family, loaded_video):
    adapter, p = loaded_video[family]
    ids = p.inputs["input_ids"][0]
    if family == "vila":  # a video is its frames, each an image: the image placeholder, frame by frame
        assert p.modality == "video" and p.grid == (8, 3, 3) and p.num_visual == 72
        assert p.segments == [{"kind": "frame", "start": 9 * i, "grid": [1, 3, 3]} for i in range(8)]
        _validate_segments("k", p.segments, p.num_visual)
        frames = (ids == adapter.video_token_id).nonzero().flatten().view(8, 9)
        assert torch.equal(p.visual_positions.view(8, 9).sort(dim=1).values, frames)
        assert (frames[1:, 0] - frames[:-1, -1]).tolist() == [2] * 7  # "<image>\n" per frame: one "\n" between
        _assert_instruction_follows_media(adapter, p)
        return
    assert p.modality == "video" and not (ids == adapter.image_token_id).any()
    assert torch.equal(p.visual_positions, (ids == adapter.video_token_id).nonzero().flatten())
    assert _words(adapter, ids[p.instruction_positions]) == ["what", "shape", "is", "the", "red", "object", "?"]
    _assert_instruction_follows_media(adapter, p)
    t, h, w = p.grid
    assert t * h * w == p.num_visual
    if family in QWEN3_STYLE:  # 4 frame groups of 3 x 4 tokens (32 px), each after "<x.x seconds><|vision_start|>"
        starts = p.visual_positions[::12]
        assert torch.equal(p.visual_positions.view(4, 12), starts[:, None] + torch.arange(12))
        assert adapter.tokenizer.convert_ids_to_tokens(ids[starts[1] - 1:starts[1]]) == ["<|vision_start|>"]
        assert _words(adapter, ids[starts[1] - 3:starts[1] - 1]) == ["seconds", ">"]
    if family == "llava_onevision":  # each frame pooled from 4 x 4 to 2 x 2 tokens, one newline after all
        assert p.segments == [{"kind": "frames", "start": 0, "grid": [8, 2, 2]},
                              {"kind": "newline", "start": 32, "grid": [1, 1, 1]}]
        _validate_segments("k", p.segments, p.num_visual)
        assert p.grid == (1, 1, 33)
    elif family == "llava_onevision1_5":  # no temporal patches: one step per frame
        assert p.grid == (8, 3, 4) and p.segments is None
    else:  # 8 frames merged 2 by 2 in time; 84 x 112 px / 28 px per token
        assert p.grid == (4, 3, 4) and p.segments is None


@pytest.mark.parametrize("family", FAMILIES)
def test_video_layer0_and_teacher_forced_match_the_model(family, loaded_video, tiny_models):
    """The video prompt's features, positions (M-RoPE's temporal axis) and layer 0 are the model's own."""
    adapter, p = loaded_video[family]
    per_head, mean = adapter.layer0_attention(p)
    _assert_eager_layer0(per_head, mean, type(adapter), tiny_models[family], p)
    ans = torch.tensor([5, 7, 9])
    torch.testing.assert_close(adapter.teacher_forced(p, ans, output_attentions=False).logits,
                               _model_logits(adapter, p, ans), atol=1e-5, rtol=1e-4)
    ids, _ = adapter.generate(p, max_new_tokens=3)
    assert ids.ndim == 1 and ids.numel() <= 3


def _model_logits(adapter, p, ans: torch.Tensor) -> torch.Tensor:
    """The model's own forward over prompt + answer ids: (1, S+T, V)."""
    inputs = dict(p.inputs)
    inputs["input_ids"] = torch.cat([p.inputs["input_ids"], ans[None]], 1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in inputs:
        text = torch.zeros(1, len(ans), dtype=torch.int)
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], text], 1)
    with torch.no_grad():
        return adapter.model(**inputs).logits


def test_answer_after_a_slow_video_continues_from_the_last_prompt_token(loaded):
    """At 0.25 fps Qwen2.5-VL puts the last frame on a temporal id beyond every text id after it. The model
    (its forward over prompt + answer, and generate) continues the answer from the last prompt token; the
    explainers' teacher-forced pass must place it there too, not after the largest id."""
    adapter, _ = loaded["qwen2_5_vl"]
    p = adapter.prepare(None, INSTRUCTION, video=tiny_video(), fps=0.25)
    pos = adapter.position_ids(p)
    assert int(pos.max()) > int(pos[..., -1].max())
    ans = torch.tensor([5, 7, 9])
    assert adapter.position_ids(p, 3)[..., -3:].flatten().tolist() == [int(pos[0, 0, -1]) + i for i in (1, 2, 3)] * 3
    torch.testing.assert_close(adapter.teacher_forced(p, ans, output_attentions=False).logits,
                               _model_logits(adapter, p, ans), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_video_frames_in_any_pil_mode_or_as_arrays(family, loaded_video):
    """Grayscale or RGBA PIL frames are frames (transformers took them for a file to decode and asked for
    torchcodec); a (T, H, W, C) uint8 array gives what its frames as PIL images give."""
    import numpy as np

    adapter, rgb = loaded_video[family]
    frames = tiny_video()
    for video in ([f.convert("L") for f in frames], [f.convert("RGBA") for f in frames],
                  np.stack([np.asarray(f) for f in frames])):
        p = adapter.prepare(None, INSTRUCTION, video=video)
        assert (p.grid, p.segments, p.seq_len) == (rgb.grid, rgb.segments, rgb.seq_len)
    key = "pixel_values" if family == "vila" else "pixel_values_videos"  # VILA: frames are images
    torch.testing.assert_close(p.inputs[key], rgb.inputs[key])


def test_qwen2_5_video_timing_comes_from_the_true_fps(loaded):
    """Qwen2.5-VL spaces video frames on M-RoPE's temporal axis by seconds: without fps= the processor
    assumes 24 fps; with it, second_per_grid_ts = temporal_patch_size / fps reaches the positions."""
    adapter, _ = loaded["qwen2_5_vl"]
    frames = tiny_video()
    default = adapter.prepare(None, INSTRUCTION, video=frames)
    slow = adapter.prepare(None, INSTRUCTION, video=frames, fps=2.0)
    assert default.inputs["second_per_grid_ts"].tolist() == pytest.approx([2 / 24])
    assert slow.inputs["second_per_grid_ts"].tolist() == pytest.approx([1.0])  # 2 frames per grid step / 2 fps
    tps = adapter.model.config.vision_config.tokens_per_second
    temporal = adapter.position_ids(slow)[0, 0, slow.visual_positions].view(4, 12)  # (t, h * w)
    assert (temporal - temporal[0, 0]).tolist() == [[i * tps] * 12 for i in range(4)]
    assert not torch.equal(adapter.position_ids(default), adapter.position_ids(slow))


@pytest.mark.parametrize("bad, match", [(dict(fps=0.0), "fps=0.0"), (dict(fps="2"), "fps='2'"),
                                        (dict(fps=2.0, image=True), "given with an image"),
                                        (dict(video=[]), "no frames"), (dict(video="clip.mp4"), "is a path"),
                                        (dict(video=[tiny_image(), tiny_image(56, 56)]),
                                         r"differ in size.*\(56, 56\)")])
def test_video_bad_input_is_a_value_error(loaded, bad, match):
    adapter, _ = loaded["qwen2_5_vl"]
    image = tiny_image() if bad.pop("image", False) else None
    video = bad.pop("video", None if image is not None else tiny_video(2))
    with pytest.raises(ValueError, match=match):
        adapter.prepare(image, INSTRUCTION, video=video, **bad)


def test_empty_instruction_is_a_value_error(loaded):
    adapter, _ = loaded["qwen2_vl"]
    with pytest.raises(ValueError, match="empty instruction"):
        adapter.prepare(tiny_image(), "  ")


@pytest.mark.parametrize("family", FAMILIES)
def test_instruction_the_template_rewrites_is_a_value_error(family, loaded, monkeypatch):
    # a template that trims or rewrites the text (here: lower case) leaves no verbatim instruction in the
    # prompt; the positions must not fall back to the prompt's first (system) tokens
    adapter, _ = loaded[family]
    messages = adapter._messages
    monkeypatch.setattr(adapter, "_messages", lambda text, modality: messages(text.lower(), modality))
    with pytest.raises(ValueError) as err:
        adapter.prepare(tiny_image(), INSTRUCTION)
    msg = str(err.value)
    assert repr(INSTRUCTION) in msg and adapter.name in msg and adapter.model_id in msg and "template" in msg


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_and_teacher_forced_match_the_model(family, loaded):
    adapter, p = loaded[family]
    ans, text = adapter.generate(p, max_new_tokens=4)
    assert ans.ndim == 1 and ans.numel() <= 4 and isinstance(text, str)
    ans = torch.tensor([5, 7, 9])
    out = adapter.teacher_forced(p, ans)
    n = p.seq_len + 3
    assert out.logits.shape[:2] == (1, n) and len(out.attentions) == adapter.num_layers
    probe = out.attentions[adapter.probe_layer]
    assert probe.shape[-2:] == (n, n) and probe.dtype == torch.float32
    softmax = set(adapter.attention_layers().values())
    assert [a is not None for a in out.attentions] == [i in softmax for i in range(adapter.num_layers)]
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
    _assert_eager_layer0(per_head, mean, type(adapter), tiny_models[family], p)


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_tower_runs_once_per_prompt(family, loaded, monkeypatch):
    """Label generation embeds a prompt several times (layer-0 attention, the explainer's forward):
    the vision features are computed once and reused, with the same result as a fresh prompt."""
    adapter, _ = loaded[family]
    calls = []
    owner, fn = (adapter.model, "encode_images") if family == "vila" else (adapter.model.model, "get_image_features")
    inner = getattr(owner, fn)
    monkeypatch.setattr(owner, fn, lambda *a, **k: calls.append(1) or inner(*a, **k))
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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_labels_and_serving_read_one_layer0_function(family, dtype, loaded, loaded_bf16):
    """data_gen labels with `adapter.layer0_attention`, the runtime scores with `instruction_attention` on its
    context: the same numbers, bit for bit, in either dtype (they once were two implementations)."""
    from predictor.runtime import make_context

    adapter, p = (loaded if dtype == "float32" else loaded_bf16)[family]
    ctx = make_context(adapter, p)
    heads, mean = instruction_attention(adapter, ctx.embeds, ctx.position_ids, p.instruction_positions,
                                        p.visual_positions)
    label_heads, label_mean = adapter.layer0_attention(p)
    assert label_heads.dtype == label_mean.dtype == torch.float32 and label_heads.device.type == "cpu"
    torch.testing.assert_close(label_heads, heads.cpu(), atol=0, rtol=0)
    torch.testing.assert_close(label_mean, mean.cpu(), atol=0, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_layer0_equals_the_captured_forward(family, loaded, loaded_bf16):
    """fp32: the q/k path is the model's own layer-0 attention. bf16: the model applies rotary in bf16, the
    q/k path in fp32 (predictor/adapters/layer0.py says why); the two stay within 0.1% of the largest value
    (0.2% for Qwen3-VL, whose normed q/k reach rotary in bf16; both are 0.6% from the fp32 model there; 0.3%
    for Qwen3.5, whose probe layer follows a linear-attention layer)."""
    adapter, p = loaded[family]
    for ours, ref in zip(adapter.layer0_attention(p), captured_layer0(adapter, p)):
        torch.testing.assert_close(ours, ref, atol=1e-7, rtol=1e-5)
    adapter, p = loaded_bf16[family]
    # Qwen3.5: 0.23% on the tiny model, its probe layer reads the bf16 output of a linear-attention layer;
    # LLaVA-OneVision-1.5: 0.35%, Qwen3's normed q/k (as Qwen3-VL's) with a single rotary axis
    bound = {"qwen3_vl": 2e-3, "qwen3_5": 3e-3, "llava_onevision1_5": 4e-3}.get(family, 1e-3)
    for ours, ref in zip(adapter.layer0_attention(p), captured_layer0(adapter, p)):
        assert (ours - ref).abs().max() <= bound * ref.abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_layer0_rotary_is_fp32_in_a_bf16_model(family, loaded_bf16, monkeypatch):
    adapter, p = loaded_bf16[family]
    rotary = adapter.language_model().rotary_emb
    seen = []
    inner = rotary.forward
    monkeypatch.setattr(rotary, "forward", lambda x, pos: seen.append(x.dtype) or inner(x, pos))
    adapter.layer0_attention(p)
    # layers before a later probe layer run as in the model's forward (rotary in its dtype)
    assert seen == [torch.bfloat16] * (adapter.probe_layer > 0) + [torch.float32]


class _TextOnly(Adapter):
    """An adapter around a bare decoder stack, for `layer0_qk` on architectures no family uses yet."""

    name = "text_only_stub"
    load = prepare = generate = teacher_forced = embed = None  # not needed here

    def __init__(self, lm):
        super().__init__(lm, None, "stub")

    def language_model(self):
        return self.model


def _tiny_qwen3(**overrides):
    """A 1-layer Qwen3 decoder (its attention applies RMS norms `q_norm`/`k_norm` per head before rotary)."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.Qwen3Config(vocab_size=50, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, attn_implementation="eager",
                         **overrides)
    lm = tf.Qwen3Model(cfg).eval()
    attn = lm.layers[0].self_attn
    with torch.no_grad():  # non-trivial norm weights, so that skipping a norm shows
        attn.q_norm.weight.uniform_(0.2, 3.0)
        attn.k_norm.weight.uniform_(0.2, 3.0)
    return lm


def test_layer0_applies_query_and_key_norms():
    lm = _tiny_qwen3()
    embeds = torch.randn(1, 20, 64)
    pos = torch.arange(20)[None]
    rows, cols = torch.tensor([15, 17, 19]), torch.arange(3, 13)
    heads, mean = instruction_attention(_TextOnly(lm), embeds, pos, rows, cols)
    with torch.no_grad():
        full = lm(inputs_embeds=embeds, position_ids=pos, output_attentions=True).attentions[0][0]  # (H, S, S)
    expect = full[:, rows][:, :, cols].mean(1)
    torch.testing.assert_close(heads, expect, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mean, expect.mean(0), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("what,match", [("sliding_window", "sliding_window=4"),
                                        ("attn_logit_softcapping", "attn_logit_softcapping=30.0")])
def test_layer0_refuses_attention_it_does_not_reproduce(what, match):
    """A layer-0 attention the q/k path would get wrong is refused by name, never scored silently."""
    lm = _tiny_qwen3()
    attn = lm.layers[0].self_attn
    if what == "sliding_window":
        attn.sliding_window = 4  # keys older than 4 positions are masked: the last row (19) sees 16..19 only
    else:
        attn.config.attn_logit_softcapping = 30.0
    with pytest.raises(ValueError, match=match):
        instruction_attention(_TextOnly(lm), torch.randn(1, 20, 64), torch.arange(20)[None], torch.tensor([19]),
                              torch.arange(3, 13))


@pytest.mark.parametrize("family", FAMILIES)
def test_runtime_uses_only_the_adapter_interface(family, loaded):
    """Pruned generation and the predictor's input work through what `Adapter` declares, nothing private."""
    from predictor.runtime import make_method, pruned_generate

    adapter, p = loaded[family]
    method = make_method("attention")
    ours = pruned_generate(interface_only(adapter), p, method, keep=0.5, max_new_tokens=3)[0]
    ref = pruned_generate(adapter, p, method, keep=0.5, max_new_tokens=3)[0]
    assert ours.answer_ids.tolist() == ref.answer_ids.tolist() and torch.equal(ours.kept_visual, ref.kept_visual)
    layers = sorted(interface_only(adapter).attention_layers().values())
    assert len(layers) >= 2 and layers[0] == interface_only(adapter).probe_layer
    assert layers[-1] < interface_only(adapter).num_layers


@pytest.mark.parametrize("family", FAMILIES)
def test_token_px_is_the_side_of_one_visual_token(family, loaded, tmp_path, monkeypatch):
    """`token_px` tiles the processed image with the visual-token grid, and the overlay draws in it."""
    import matplotlib.axes

    from predictor.runtime.report import kept_overlay

    adapter, p = loaded[family]
    vcfg = adapter.model.config.vision_config
    if family == "llava_onevision":  # the base image: (image_size / patch)^2 tokens
        assert adapter.token_px * p.segments[0]["grid"][1] == vcfg.image_size
        grid = tuple(p.segments[0]["grid"])
    elif family == "vila":  # resized to 70 px: 5 patches a side padded to 6, 2 x 2 merged: 3 tokens of 28 px
        assert adapter.token_px == 28 and p.grid[1] * adapter.token_px == 84 == vcfg.image_size + vcfg.patch_size
        grid = p.grid
    else:  # 84 x 112 px at 28 px per token (14 px patches merged 2 x 2); Qwen3-VL: resized to 96 x 128, 32 px
        px, size = (32, (96, 128)) if family in QWEN3_STYLE else (28, (84, 112))
        assert adapter.token_px == px and (p.grid[1] * adapter.token_px, p.grid[2] * adapter.token_px) == size
        grid = p.grid
    shown = []
    inner = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow",
                        lambda ax, img, **k: shown.append(img.shape) or inner(ax, img, **k))
    n = grid[0] * grid[1] * grid[2]
    kept = {"all": torch.ones(n, dtype=torch.bool)}
    assert kept_overlay(tiny_image(), grid, kept, tmp_path / "a.png", token_px=adapter.token_px) is not None
    assert kept_overlay(tiny_image(), grid, kept, tmp_path / "b.png") is not None  # default: Qwen2-VL's 28 px
    assert shown == [(grid[1] * adapter.token_px, grid[2] * adapter.token_px, 3), (grid[1] * 28, grid[2] * 28, 3)]


def test_llava_onevision1_5_refuses_a_transformers_without_it(monkeypatch, tmp_path):
    """The declared floor (5.23) predates LLaVA-OneVision-1.5 (5.25): loading it there names the release."""
    import transformers

    monkeypatch.setattr(transformers, "__version__", "5.23.0")
    with pytest.raises(ImportError, match=r"needs transformers >= 5.25 .* this is 5.23.0: pip install"):
        get_adapter("llava_onevision1_5").load(str(tmp_path))
