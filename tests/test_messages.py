"""The chat prompt: several images or videos, interleaved text and conversation history, for every family."""
import pytest
import torch

from models import ADAPTER_OF, FAMILIES, tiny_image, tiny_models, tiny_video  # noqa: F401
from predictor.adapters import load_adapter
from predictor.schema import SampleError, VisualSpan, _validate_segments, visual_spans

INSTRUCTION = "What shape is the red object?"


@pytest.fixture(scope="module")
def adapters(tiny_models):
    return {family: load_adapter(ADAPTER_OF[family], str(tiny_models[family])) for family in FAMILIES}


def _chat(first=tiny_image(), second=tiny_image(56, 56, 3)):
    """Two images in the first user turn, text around them, an answer, then a text-only question."""
    return [{"role": "user", "content": [{"type": "text", "text": "in the left image"}, {"type": "image", "image": first},
                                         {"type": "text", "text": "above"}, {"type": "image", "image": second},
                                         {"type": "text", "text": "is a red circle?"}]},
            {"role": "assistant", "content": "yes left"},
            {"role": "user", "content": [{"type": "text", "text": "what colour is the square?"}]}]


def _words(adapter, p):
    """The instruction's tokens as text, one per token (a word-level or byte-level BPE tokenizer alike)."""
    ids = p.inputs["input_ids"][0][p.instruction_positions]
    return [adapter.tokenizer.decode([int(i)]).strip().lower() for i in ids]


@pytest.mark.parametrize("family", FAMILIES)
def test_short_form_is_one_user_turn(family, adapters):
    adapter = adapters[family]
    short = adapter.prepare(tiny_image(), INSTRUCTION)
    chat = adapter.prepare_messages([{"role": "user", "content": [{"type": "image", "image": tiny_image()},
                                                                   {"type": "text", "text": INSTRUCTION}]}])
    assert short.inputs.keys() == chat.inputs.keys()
    for k, v in short.inputs.items():
        assert torch.equal(v, chat.inputs[k]) if isinstance(v, torch.Tensor) else v == chat.inputs[k], k
    for name in ("visual_positions", "instruction_positions"):
        assert torch.equal(getattr(short, name), getattr(chat, name))
    assert (short.grid, short.segments, short.prompt_text, short.modality, short.instruction) == \
           (chat.grid, chat.segments, chat.prompt_text, chat.modality, chat.instruction)
    assert short.visual_spans() == [VisualSpan(0, short.num_visual, short.grid)]


@pytest.mark.parametrize("family", FAMILIES)
def test_two_images_with_history(family, adapters, tiny_models):
    adapter = adapters[family]
    p = adapter.prepare_messages(_chat())
    ids = p.inputs["input_ids"][0]
    # VILA's projector emits an image's tokens column by column: visual order (row-major) permutes each run
    in_order = p.visual_positions if family != "vila" else p.visual_positions.view(2, 9).sort(1).values.flatten()
    assert torch.equal(in_order, (ids == adapter.image_token_id).nonzero().flatten())
    _validate_segments("k", p.segments, p.num_visual)
    assert p.grid == (1, 1, p.num_visual) and {s["visual"] for s in p.segments} == {0, 1}
    spans = p.visual_spans()
    assert len(spans) == 2 and spans[0].start == 0 and spans[0].stop == spans[1].start and spans[1].stop == p.num_visual
    # each image's tokens form one run of image tokens in the prompt, the first image's before the text "and"
    for s in spans:
        pos = p.visual_positions[s.start:s.stop]
        run = torch.arange(int(pos[0]), int(pos[0]) + pos.numel())
        assert torch.equal(pos, run if family != "vila" else run.view(3, 3).t().flatten())
    if family == "llava_onevision":  # an image among several: base image and newline, no crops
        assert [s["kind"] for s in p.segments] == ["base", "newline"] * 2
    elif family == "vila":  # every image resized to the tower's size: 3 x 3 tokens each
        assert [s.grid for s in spans] == [(1, 3, 3), (1, 3, 3)]
    else:  # 112 x 84 px -> 3 x 4 tokens, 56 x 56 px -> 2 x 2
        assert [s.grid for s in spans] == [(1, 3, 4), (1, 2, 2)]
    # the instruction: by default the last user turn only; "all": every user turn's text, never the answer
    assert _words(adapter, p) == ["what", "colour", "is", "the", "square", "?"] and p.instruction == "what colour is the square?"
    every = adapter.prepare_messages(_chat(), instruction="all")
    assert _words(adapter, every) == ["in", "the", "left", "image", "above", "is", "a", "red", "circle", "?",
                                      "what", "colour", "is", "the", "square", "?"]
    assert torch.equal(every.instruction_positions[-6:], p.instruction_positions)
    if family != "llava_onevision":  # its chat template puts a turn's images before the turn's text
        assert int(every.instruction_positions[0]) < int(p.visual_positions[0])  # text before the first image
    # the embedded prompt is the model's own: layer 0 of an eager forward sees the same attention
    per_head, mean = adapter.layer0_attention(p)
    eager = type(adapter).load(str(tiny_models[family]), attn_implementation="eager")
    with torch.no_grad():
        att = eager.model(**p.inputs, output_attentions=True).attentions[0][0]
    expect = att[:, p.instruction_positions][:, :, p.visual_positions].mean(1)
    torch.testing.assert_close(per_head, expect, atol=1e-6, rtol=1e-5)
    ans, text = adapter.generate(p, max_new_tokens=3)
    assert ans.numel() <= 3 and isinstance(text, str)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_two_videos_in_two_turns(family, adapters):
    adapter = adapters[family]
    msgs = [{"role": "user", "content": [{"type": "video", "video": tiny_video(4), "fps": 2.0},
                                         {"type": "text", "text": "what is left?"}]},
            {"role": "assistant", "content": "the circle"},
            {"role": "user", "content": [{"type": "video", "video": tiny_video(6)}, {"type": "text", "text": "how many circle?"}]}]
    p = adapter.prepare_messages(msgs)
    assert p.modality == "video" and [s["grid"] for s in p.segments] == [[2, 3, 4], [3, 3, 4]]
    assert _words(adapter, p) == ["how", "many", "circle", "?"]
    assert _words(adapter, adapter.prepare_messages(msgs, instruction="all")) == ["what", "is", "left", "?", "how", "many", "circle", "?"]


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "end the messages with the user turn"),
    ([{"role": "user", "content": [{"type": "image", "image": tiny_image()}]}], "no text"),
    ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}], "needs the image itself"),
    ([{"role": "robot", "content": "q"}], r"messages\[0\]"),
    ([{"role": "user", "content": [{"type": "audio"}]}], r"messages\[0\].content\[0\]"),
    ([{"role": "user", "content": [{"type": "image", "image": tiny_image()}, {"type": "video", "video": tiny_video(4)},
                                   {"type": "text", "text": "q"}]}], "mix images and videos"),
])
def test_bad_messages_are_value_errors(messages, match, adapters):
    with pytest.raises(ValueError, match=match):
        adapters["qwen2_vl"].prepare_messages(messages)


def test_instruction_mode_is_checked(adapters):
    with pytest.raises(ValueError, match="'last', 'all'"):
        adapters["qwen2_vl"].prepare_messages(_chat(), instruction="first")


def test_segments_visual_index_is_validated():
    seg = [{"kind": "image", "start": 0, "grid": [1, 2, 2], "visual": 0},
           {"kind": "image", "start": 4, "grid": [1, 1, 2], "visual": 1}]
    _validate_segments("k", seg, 6)
    assert visual_spans(seg, (1, 1, 6), 6) == [VisualSpan(0, 4, (1, 2, 2)), VisualSpan(4, 6, (1, 1, 2))]
    with pytest.raises(SampleError, match="visual"):
        _validate_segments("k", [seg[0], {**seg[1], "visual": 2}], 6)
    with pytest.raises(SampleError, match="on every segment or on none"):
        _validate_segments("k", [seg[0], {k: v for k, v in seg[1].items() if k != "visual"}], 6)
    with pytest.raises(SampleError, match="grid"):
        _validate_segments("k", [{**seg[0], "grid": [1, 0, 4]}], 0)
