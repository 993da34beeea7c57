import pytest
import torch

from reference_mllm.tokenizer import LLAVA_OV_SPECIAL, QWEN2_VL_SPECIAL, build_tokenizer
from models import FAMILIES, tiny_image, tiny_models  # noqa: F401 (tiny_models: a fixture)

# families whose folder is one transformers checkpoint (VILA1.5's is a folder of parts: tests/test_vila.py)
HF_NATIVE = tuple(f for f in FAMILIES if f != "vila")


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_tokenizer_words_special_tokens_and_unknowns(family):
    tok = build_tokenizer(["Red circle", "square"], family)
    ids = tok("red Circle, square 42 zebra")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["red", "circle", ",", "square", "4", "2", "<unk>"]
    specials = QWEN2_VL_SPECIAL if family == "qwen2_vl" else LLAVA_OV_SPECIAL
    for s in specials:  # each special token is one atomic token, skipped when decoding
        (i,) = tok(f"red{s}red")["input_ids"][1:2]
        assert tok.convert_ids_to_tokens(i) == s
    assert tok.decode(tok(f"{specials[1]}red circle, square")["input_ids"], skip_special_tokens=True) == \
        "red circle, square"


def test_tokenizer_unknown_family():
    with pytest.raises(KeyError, match="available: llava_onevision, qwen2_5_vl, qwen2_vl"):
        build_tokenizer(["a"], "llama")


def test_chat_templates_match_the_real_models(tiny_models):
    from transformers import AutoTokenizer

    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    qwen = AutoTokenizer.from_pretrained(tiny_models["qwen2_vl"]).apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=False)
    assert qwen == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>What colour?<|im_end|>\n<|im_start|>assistant\n")
    llava = AutoTokenizer.from_pretrained(tiny_models["llava_onevision"]).apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=False)
    assert llava == "<|im_start|>user <image>\nWhat colour?<|im_end|><|im_start|>assistant\n"


@pytest.mark.parametrize("family", HF_NATIVE)
def test_folder_loads_like_a_checkpoint(family, tiny_models):
    import transformers as tf

    path = tiny_models[family]
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (path / name).exists(), name
    cls = {"qwen2_vl": tf.Qwen2VLForConditionalGeneration, "qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration,
           "llava_onevision": tf.LlavaOnevisionForConditionalGeneration,
           "qwen3_vl": tf.Qwen3VLForConditionalGeneration, "qwen3_5": tf.Qwen3_5ForConditionalGeneration,
           "llava_onevision1_5": getattr(tf, "LlavaOnevision15ForConditionalGeneration", None)}[family]
    model = tf.AutoModelForImageTextToText.from_pretrained(path)
    assert type(model) is cls
    proc = tf.AutoProcessor.from_pretrained(path)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what"}]}],
                                    add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[text], images=[tiny_image()], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    assert torch.isfinite(out.logits).all() and out.logits.shape[1] == inputs["input_ids"].shape[1]


def _processed(processor, media: str, content, **kwargs):
    msgs = [{"role": "user", "content": [{"type": media}, {"type": "text", "text": "what"}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], return_tensors="pt", **{f"{media}s": [content]}, **kwargs)


@pytest.mark.parametrize("family", HF_NATIVE)
def test_torchvision_and_pil_image_processors_agree(family, tiny_models):
    """transformers picks the torchvision ("fast") image processor where torchvision is installed; the PIL one
    must give the same tokens and pixels to within rounding of a resize (1-2 of 255 levels)."""
    import transformers as tf

    procs = {b: tf.AutoProcessor.from_pretrained(tiny_models[family]) for b in ("torchvision", "pil")}
    # backend="pil" on the processor would ask for a PIL video processor too, and none exists
    procs["pil"].image_processor = tf.AutoImageProcessor.from_pretrained(tiny_models[family], backend="pil")
    assert type(procs["pil"].image_processor).__name__.endswith("Pil")
    assert not type(procs["torchvision"].image_processor).__name__.endswith("Pil")
    std = min(procs["pil"].image_processor.image_std)
    for image in (tiny_image(), tiny_image(97, 61, seed=3)):  # one on the token grid, one resized
        fast, pil = (_processed(procs[b], "image", image) for b in ("torchvision", "pil"))
        assert torch.equal(fast["input_ids"], pil["input_ids"])
        assert fast["pixel_values"].shape == pil["pixel_values"].shape
        diff = (fast["pixel_values"] - pil["pixel_values"]).abs()
        assert diff.max() <= 3 / 255 / std and diff.mean() <= 1e-4, (diff.max(), diff.mean())


@pytest.mark.parametrize("family", HF_NATIVE)
def test_video_processor_treats_a_frame_like_the_image_processor(family, tiny_models):
    """One frame, as a video and as an image, reaches the tower with the same pixels: the tiny folders'
    video processors share the image processors' size, resampling, mean and std."""
    import transformers as tf

    proc = tf.AutoProcessor.from_pretrained(tiny_models[family])
    image = tiny_image()
    as_image = _processed(proc, "image", image)
    if family == "llava_onevision":  # the video frame is the anyres base image (the whole image resized)
        as_video = _processed(proc, "video", [image])
        frame, base = as_video["pixel_values_videos"][0, 0], as_image["pixel_values"][0, 0]
    else:  # two identical frames fill one temporal patch, as the image processor repeats one image
        # (LLaVA-OneVision-1.5 has no temporal patches: one frame is one image)
        as_video = _processed(proc, "video", [image] if family == "llava_onevision1_5" else [image, image])
        assert as_video["video_grid_thw"].tolist() == as_image["image_grid_thw"].tolist()
        frame, base = as_video["pixel_values_videos"], as_image["pixel_values"]
    torch.testing.assert_close(frame, base, atol=3 / 255 / 0.5, rtol=0)
    assert (frame - base).abs().mean() <= 1e-4
