"""VILA1.5 composed from transformers' parts: the tiny folder has the released layout and keys, the adapter's
logits equal a forward written here by hand (tower -> projector -> merge -> LLM), the authors' templates and
preprocessing, and a wrong folder is refused naming the missing part. The family-parametrized tests
(test_adapters, test_runtime, test_explainers) run `vila` too."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import WORDS, tiny_image, tiny_models, tiny_video  # noqa: F401  (tiny_models: a fixture)
from predictor.adapters import load_adapter

FIXTURES = Path(__file__).parent / "fixtures" / "vila"
INSTRUCTION = "What shape is the red object?"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")


@pytest.fixture(scope="module")
def vila(tiny_models):
    return load_adapter("vila", str(tiny_models["vila"]))


def test_tiny_folder_has_the_released_layout_and_keys(tiny_models):
    released = json.loads((FIXTURES / "VILA1.5-3b.keys.json").read_text())
    root = tiny_models["vila"]
    top = json.loads((root / "config.json").read_text())
    assert sorted(top) == sorted(released["top"])
    for key in ("architectures", "model_type", "image_aspect_ratio", "mm_vision_select_feature",
                "mm_vision_select_layer", "mm_use_im_start_end", "mm_use_im_patch_token", "s2", "num_video_frames"):
        assert top[key] == released["values"][key], key
    for sub in ("llm_cfg", "vision_tower_cfg", "mm_projector_cfg"):
        extra = ("mm_projector_type",) if sub == "mm_projector_cfg" else ()
        for key in ("_name_or_path", "architectures", "model_type", *extra):
            assert top[sub][key] == released[sub][key], (sub, key)
    assert top["mm_hidden_size"] == top["vision_tower_cfg"]["hidden_size"]
    assert top["hidden_size"] == top["llm_cfg"]["hidden_size"]
    for part in ("llm/config.json", "llm/model.safetensors", "llm/tokenizer.json", "vision_tower/config.json",
                 "vision_tower/model.safetensors", "vision_tower/preprocessor_config.json", "mm_projector/config.json",
                 "mm_projector/model.safetensors"):
        assert (root / part).exists(), part
    from safetensors.torch import load_file

    keys = sorted(load_file(str(root / "mm_projector" / "model.safetensors")))
    assert keys == [f"layers.{i}.{w}" for i in (1, 2, 4) for w in ("bias", "weight")]  # the authors' Sequential


def test_parts_load_with_transformers_own_classes(tiny_models):
    import transformers as tf

    root = tiny_models["vila"]
    assert type(tf.AutoModelForCausalLM.from_pretrained(root / "llm")) is tf.LlamaForCausalLM
    assert type(tf.AutoModel.from_pretrained(root / "vision_tower")) is tf.SiglipVisionModel


def _reference_logits(root: Path, image: Image.Image, instruction: str, answer: torch.Tensor) -> torch.Tensor:
    """VILA1.5's forward written out by hand from the folder's files (no adapter code): resize to the tower's
    size, normalise, SigLIP's second-to-last hidden states, zero-pad to even sides, 2 x 2 concatenation
    emitted column by column, LayerNorm, Linear, GELU, Linear, the vicuna_v1 prompt with the tokens in place
    of <image>, then the Llama LLM."""
    import transformers as tf
    from safetensors.torch import load_file

    llm = tf.LlamaForCausalLM.from_pretrained(root / "llm").eval()
    tower = tf.SiglipVisionModel.from_pretrained(root / "vision_tower").eval()
    tok = tf.AutoTokenizer.from_pretrained(root / "llm")
    w = load_file(str(root / "mm_projector" / "model.safetensors"))
    size = tower.config.image_size
    px = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    px = torch.from_numpy((px - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        hidden = tower(pixel_values=px, output_hidden_states=True).hidden_states[-2][0]  # (p*p, c)
        p = size // tower.config.patch_size
        grid = torch.zeros(p + 1, p + 1, hidden.shape[-1])  # p is odd: one zero row and column
        grid[:p, :p] = hidden.view(p, p, -1)
        m = (p + 1) // 2
        merged = torch.stack([torch.cat([grid[2 * i, 2 * j], grid[2 * i, 2 * j + 1], grid[2 * i + 1, 2 * j],
                                         grid[2 * i + 1, 2 * j + 1]]) for j in range(m) for i in range(m)])
        x = torch.nn.functional.layer_norm(merged, (merged.shape[-1],), w["layers.1.weight"], w["layers.1.bias"])
        x = torch.nn.functional.gelu(x @ w["layers.2.weight"].T + w["layers.2.bias"])
        feats = x @ w["layers.4.weight"].T + w["layers.4.bias"]
        before = tok(f"{VICUNA_SYSTEM} USER: ").input_ids  # with BOS
        after = tok(f"\n{instruction} ASSISTANT:").input_ids[1:]  # its BOS dropped
        emb = llm.get_input_embeddings()
        embeds = torch.cat([emb(torch.tensor(before)), feats, emb(torch.tensor(after)), emb(answer)])[None]
        return llm(inputs_embeds=embeds).logits


def test_logits_equal_a_hand_written_reference_forward(vila, tiny_models):
    image = tiny_image(97, 61, seed=2)  # not square: resize squashes it
    p = vila.prepare(image, INSTRUCTION)
    assert p.prompt_text == f"{VICUNA_SYSTEM} USER: <image>\n{INSTRUCTION} ASSISTANT:"
    answer = torch.tensor([5, 7, 9])
    ref = _reference_logits(tiny_models["vila"], image, INSTRUCTION, answer)
    ours = vila.teacher_forced(p, answer, output_attentions=False).logits
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_keep_one_generation_is_the_composed_models_own(vila):
    """`generate` (and pruned generation at keep 1.0) answer what the LLM's own generate answers from the merged
    embeddings, stopping at the template's stop token."""
    from predictor.runtime import make_method, pruned_generate

    p = vila.prepare(tiny_image(), INSTRUCTION)
    model = vila.model
    with torch.no_grad():  # the composed model: its tower and projector, its merge, its LLM's generate
        embeds = model.embed(p.inputs["input_ids"], model.encode_images(p.inputs["pixel_values"]).flatten(0, 1))
        own = model.llm.generate(inputs_embeds=embeds, max_new_tokens=6, do_sample=False)[0]
    ids, _ = vila.generate(p, max_new_tokens=6)
    stop = vila.tokenizer.eos_token_id
    expect = own.tolist()[:own.tolist().index(stop)] if stop in own.tolist() else own.tolist()
    assert ids.tolist() == expect
    pruned = pruned_generate(vila, p, make_method("attention"), keep=1.0, max_new_tokens=6)[0]
    assert pruned.answer_ids.tolist() == expect


def test_templates_render_as_the_authors_conversation():
    from predictor.adapters.vila import TEMPLATES, user_message

    msg = user_message([Image.new("RGB", (4, 4)), "Describe it."])
    assert msg == "<image>\nDescribe it."
    two = TEMPLATES["vicuna_v1"]
    expect = f"{VICUNA_SYSTEM} USER: <image>\nDescribe it. ASSISTANT:"
    assert two.render([(two.roles[0], msg), (two.roles[1], None)]) == expect
    assert two.stop == "</s>"
    l3 = TEMPLATES["llama_3"]
    assert l3.render([(l3.roles[0], msg), (l3.roles[1], None)]) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision "
        "assistant. You are able to understand the visual content that the user provides, and assist the user with "
        "a variety of tasks using natural language.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\n"
        "Describe it.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert l3.stop == "<|eot_id|>"


def _two_images_two_turns(first=None, second=None):
    return [{"role": "user", "content": [{"type": "text", "text": "describe"},
                                         {"type": "image", "image": first or tiny_image()},
                                         {"type": "image", "image": second or tiny_image(56, 56, 3)},
                                         {"type": "text", "text": "what is red?"}]},
            {"role": "assistant", "content": "the left one."},
            {"role": "user", "content": [{"type": "text", "text": "and the shape?"}]}]


def test_two_image_two_turn_prompt_is_the_authors_rendering(tiny_models):
    """llava/conversation.py get_prompt, written out: vicuna_v1 ends the user turn with sep " " and the
    answer with sep2 "</s>"; llama_3 ends every turn with <|eot_id|>. Each image is "<image>\\n" where
    the messages put it."""
    from predictor.adapters.vila import TEMPLATES

    vila = load_adapter("vila", str(tiny_models["vila"]))
    p = vila.prepare_messages(_two_images_two_turns())
    assert p.prompt_text == (f"{VICUNA_SYSTEM} USER: describe<image>\n<image>\nwhat is red? ASSISTANT: the left one."
                             f"</s>USER: and the shape? ASSISTANT:")
    # tokenizer_image_token: the text between placeholders tokenised chunk by chunk, BOS on the first only,
    # and each placeholder becomes the image's 9 tokens
    tok, chunks = vila.tokenizer, p.prompt_text.split("<image>")
    expect = tok(chunks[0])["input_ids"]
    for chunk in chunks[1:]:
        expect += [-200] * 9 + tok(chunk)["input_ids"][1:]
    assert p.inputs["input_ids"][0].tolist() == expect and p.inputs["pixel_values"].shape[0] == 2
    assert p.segments == [{"kind": "image", "start": 0, "grid": [1, 3, 3], "visual": 0},
                          {"kind": "image", "start": 9, "grid": [1, 3, 3], "visual": 1}]
    words = tok.convert_ids_to_tokens(p.inputs["input_ids"][0][p.instruction_positions])  # a lower-case vocabulary
    assert "".join(words).replace("▁", "") == "andtheshape?" and p.instruction == "and the shape?"
    every = vila.prepare_messages(_two_images_two_turns(), instruction="all")
    words = tok.convert_ids_to_tokens(every.inputs["input_ids"][0][every.instruction_positions])
    assert "".join(words).replace("▁", "") == "describewhatisred?andtheshape?"
    vila.processor.template = TEMPLATES["llama_3"]
    assert vila.prepare_messages(_two_images_two_turns()).prompt_text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision "
        "assistant. You are able to understand the visual content that the user provides, and assist the user with "
        "a variety of tasks using natural language.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "describe<image>\n<image>\nwhat is red?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "the left one.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nand the shape?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    system = [{"role": "system", "content": "Be brief."}]
    assert vila.prepare_messages(system + _two_images_two_turns()).prompt_text.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user")


def test_short_form_is_the_authors_single_image_prompt(vila):
    """prepare(image, instruction) as before the message form: "<image>\\n" then the question, 9 tokens in
    the placeholder's place, visual order row-major over the column-major slots, no segments."""
    p = vila.prepare(tiny_image(), INSTRUCTION)
    head, tail = p.prompt_text.split("<image>")
    tok = vila.tokenizer
    expect = tok(head)["input_ids"] + [-200] * 9 + tok(tail)["input_ids"][1:]
    assert p.inputs["input_ids"][0].tolist() == expect
    first = len(tok(head)["input_ids"])
    assert p.visual_positions.tolist() == [first + 3 * c + r for r in range(3) for c in range(3)]
    assert (p.grid, p.segments, p.modality, p.instruction) == ((1, 3, 3), None, "image", INSTRUCTION)
    words = tok.convert_ids_to_tokens(p.inputs["input_ids"][0][p.instruction_positions])
    assert "".join(words).replace("▁", "") == INSTRUCTION.replace(" ", "").lower()
    assert int(p.instruction_positions[0]) == first + 9 + 1  # after the image's tokens and its "\n"


def test_images_and_video_frames_mix_in_one_prompt(vila):
    """A video part is its frames, each "<image>\\n"; images and videos mix (all are images to VILA), each
    item one segment: an image 1 x 3 x 3, a video its frames T x 3 x 3."""
    from predictor.schema import _validate_segments

    frames = tiny_video(3)
    msgs = [{"role": "user", "content": [{"type": "image", "image": tiny_image()},
                                         {"type": "text", "text": "then"},
                                         {"type": "video", "video": frames, "fps": 2.0},
                                         {"type": "text", "text": "what moved?"}]}]
    p = vila.prepare_messages(msgs)
    assert p.prompt_text.endswith("USER: <image>\nthen<image>\n<image>\n<image>\nwhat moved? ASSISTANT:")
    assert p.modality == "video" and p.grid == (1, 1, 36) and p.inputs["pixel_values"].shape[0] == 4
    assert p.segments == [{"kind": "image", "start": 0, "grid": [1, 3, 3], "visual": 0},
                          {"kind": "frames", "start": 9, "grid": [3, 3, 3], "visual": 1}]
    assert [s.grid for s in p.visual_spans()] == [(1, 3, 3), (3, 3, 3)]
    _validate_segments("k", p.segments, p.num_visual)  # the shard schema takes them as meta.segments
    alone = vila.prepare(None, "what moved?", video=frames)
    torch.testing.assert_close(p.inputs["pixel_values"][1:], alone.inputs["pixel_values"])
    torch.testing.assert_close(vila.visual_features(p)[0][9:], vila.visual_features(alone)[0], atol=1e-6, rtol=1e-5)
    one_video = vila.prepare_messages([{"role": "user", "content": [{"type": "video", "video": frames},
                                                                    {"type": "text", "text": "what moved?"}]}])
    assert (one_video.grid, one_video.segments, one_video.prompt_text) == \
           (alone.grid, alone.segments, alone.prompt_text)


@pytest.mark.parametrize("messages, match", [
    ([{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}], "alternates user and assistant"),
    ([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"}], "alternates user and assistant"),
    ([{"role": "user", "content": [{"type": "image", "image": tiny_image()}, {"type": "text", "text": "<image> q"}]}],
     "VILA's image placeholder"),
])
def test_bad_conversations_are_value_errors(vila, messages, match):
    with pytest.raises(ValueError, match=match):
        vila.prepare_messages(messages)


def test_conv_mode_is_chosen_by_the_llm_tokenizer_or_named(tiny_models):
    from predictor.adapters.vila import pick_template

    class Llama3Vocab:
        def get_vocab(self):
            return {"<|eot_id|>": 128009}
    assert pick_template("auto", Llama3Vocab()).name == "llama_3"
    adapter = load_adapter("vila", str(tiny_models["vila"]))
    assert adapter.processor.template.name == "vicuna_v1"
    with pytest.raises(ValueError, match="hermes-2"):
        load_adapter("vila", str(tiny_models["vila"]), conv_mode="hermes-2")


def test_pad_aspect_ratio_pads_with_the_image_mean(tmp_path):
    from reference_mllm.tiny_models import build_vila

    root = build_vila(tmp_path / "pad", WORDS, image_aspect_ratio="pad")
    adapter = load_adapter("vila", str(root))
    wide = tiny_image(97, 61, seed=1)
    square = Image.new("RGB", (97, 97), (127, 127, 127))  # int(0.5 * 255): expand2square's background
    square.paste(wide, (0, (97 - 61) // 2))
    got = adapter.prepare(wide, INSTRUCTION).inputs["pixel_values"][0]
    expect = adapter.processor.image_processor(square, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(got, expect)


def test_mlp2x_gelu_projector_has_one_token_per_patch(tmp_path):
    from reference_mllm.tiny_models import build_vila

    adapter = load_adapter("vila", str(build_vila(tmp_path / "mlp", WORDS, projector="mlp2x_gelu")))
    p = adapter.prepare(tiny_image(), INSTRUCTION)
    assert p.grid == (1, 5, 5) and adapter.token_px == 14
    assert torch.equal(p.visual_positions, (p.inputs["input_ids"][0] == -200).nonzero().flatten())  # row-major
    heads, _ = adapter.layer0_attention(p)
    assert heads.shape[1] == 25


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage, error, match", [
    (lambda r: shutil.rmtree(r / "mm_projector"), FileNotFoundError, r"mm_projector/config\.json is missing"),
    (lambda r: (r / "vision_tower" / "preprocessor_config.json").unlink(), FileNotFoundError,
     r"vision_tower/preprocessor_config\.json is missing"),
    (lambda r: shutil.rmtree(r / "llm"), FileNotFoundError, r"llm/config\.json is missing"),
    (lambda r: (r / "config.json").unlink(), FileNotFoundError, "config.json is missing"),
    (lambda r: _edit(r / "config.json", model_type="llava"), ValueError, "model_type='llava'"),
    (lambda r: _edit(r / "config.json", image_aspect_ratio="dynamic_s2", dynamic_s2=True), ValueError, "NVILA"),
    (lambda r: _edit(r / "mm_projector" / "config.json", mm_projector_type="mlp_downsample_3x3_fix"), ValueError,
     "mlp_downsample_3x3_fix"),
    (lambda r: _edit(r / "vision_tower" / "config.json", model_type="clip_vision_model"), ValueError, "InternViT"),
])
def test_a_wrong_layout_is_refused_naming_the_part(tiny_models, tmp_path, damage, error, match):
    root = _copy(tiny_models["vila"], tmp_path / "ckpt")
    damage(root)
    with pytest.raises(error, match=match) as err:
        load_adapter("vila", str(root))
    assert str(root) in str(err.value)


def _edit(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_trust_remote_code_is_refused(tiny_models):
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_adapter("vila", str(tiny_models["vila"]), trust_remote_code=True)


def test_video_frames_are_images_in_sequence(vila):
    """Each frame is one image: its own "<image>\\n", its own 3 x 3 tokens, the same pixels as that image alone."""
    frames = tiny_video(3)
    p = vila.prepare(None, INSTRUCTION, video=frames)
    assert p.grid == (3, 3, 3) and p.prompt_text.count("<image>\n") == 3
    alone = vila.prepare(frames[1], INSTRUCTION)
    torch.testing.assert_close(p.inputs["pixel_values"][1], alone.inputs["pixel_values"][0])
    feats, _ = vila.visual_features(p)
    torch.testing.assert_close(feats[9:18], vila.visual_features(alone)[0], atol=1e-6, rtol=1e-5)


def _run(args: list[str]) -> str:
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, *args], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_data_gen_train_eval_on_tiny_vila(tiny_models, tmp_path):
    """`python -m data_gen model=vila`, `python train.py`, `python eval.py model=vila` over a JSON-lines file of
    images: VILA's 3 x 3 tokens per image, coordinates from its grid; then video labels (synthetic clips)."""
    lines = []
    for i in range(4):
        tiny_image(97 + 7 * i, 61 + 5 * i, seed=i).save(tmp_path / f"img{i}.png")
        lines.append(json.dumps({"id": f"q{i}", "image": f"img{i}.png", "instruction": INSTRUCTION,
                                 "answer": "circle"}))
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    shards, export = tmp_path / "shards", tmp_path / "export"
    model = ["model=vila", f"model.path={tiny_models['vila']}", "model.device=cpu", "model.dtype=float32"]
    source = ["source=jsonl", f"source.path={tmp_path / 'items.jsonl'}"]
    _run(["-m", "data_gen", *model, *source, "correctness=none", "max_new_tokens=2", "shard_size=2", f"out={shards}",
          "progress=false", f"hydra.run.dir={tmp_path}/h1"])
    summary = json.loads((shards / "summary-r00000.json").read_text())
    assert summary["written"] == 4 and summary["visual_tokens_per_sample"] == 9
    _run(["train.py", f"data.shards={shards}", f"export_dir={export}", "trainer.max_epochs=1", "logger=none",
          "data.val_fraction=0", "model.widths=[4,8]", f"hydra.run.dir={tmp_path}/h2"])
    assert json.loads((export / "config.json").read_text())["trained_on"]["adapter"] == "vila"
    _run(["eval.py", *model, *source, f"predictor={export}", "max_items=2", "max_new_tokens=2", "correctness=none",
          "timing=false", "figures=1", "fidelity.shards=null", "progress=false", "generalisation=null",
          f"out={tmp_path / 'eval'}", f"hydra.run.dir={tmp_path}/h3"])
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["results"]["predictor"]["0.5"]["n"] == 2 and res["results"]["predictor"]["0.5"]["visual_tokens"] == 5
    # video: each of the source's num_frames frames is an image of 3 x 3 tokens, grid (frames, 3, 3)
    _run(["-m", "data_gen", *model, "source=synthetic_video", "source.num_frames=4", "max_items=2", "correctness=none",
          "max_new_tokens=2", f"out={tmp_path / 'video'}", "progress=false", f"hydra.run.dir={tmp_path}/h4"])
    summary = json.loads((tmp_path / "video" / "summary-r00000.json").read_text())
    assert summary["written"] == 2 and summary["visual_tokens_per_sample"] == 36
