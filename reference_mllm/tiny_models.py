"""Tiny random MLLMs in real HF families, built offline from configs.

No weights can be downloaded here, so tests, benchmarks and the reference MLLM build models with
transformers' own classes (`Qwen2VLForConditionalGeneration`, `Qwen2_5_VLForConditionalGeneration`,
`Qwen3VLForConditionalGeneration`, `LlavaOnevisionForConditionalGeneration`), a word-level tokenizer made
with the `tokenizers` library and the family's processor classes, and save them with `save_pretrained`: the folder then loads
through `from_pretrained` (and our adapters) exactly like a real checkpoint.

    build_qwen2_vl(out_dir, words)          -> Path   (Qwen2-VL or, variant="qwen2_5_vl", Qwen2.5-VL)
    build_llava_onevision(out_dir, words)   -> Path
    build_qwen3_vl(out_dir, words)          -> Path   (Qwen3-VL or, moe=True, Qwen3-VL-MoE; DeepStack, 32 px tokens)
    build_vila(out_dir, words)              -> Path   (a VILA1.5 folder: llm/, vision_tower/, mm_projector/)
    build_qwen3_5(out_dir, words)           -> Path   (Qwen3.5: hybrid Gated DeltaNet / gated softmax attention)
    build_llava_onevision1_5(out_dir, words) -> Path  (LLaVA-OneVision-1.5: RICE-ViT + merger, Qwen3 LLM, 1-D RoPE)
    make_qwen2_vl(words) / make_llava_onevision(words) -> (model, processor) in memory (train, then save)
    save_model(model, processor, out_dir)   -> Path

The tokenizer is word-level (`reference_mllm.tokenizer`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from reference_mllm.tokenizer import build_tokenizer


def _ids(tokenizer, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


# --- Qwen2-VL / Qwen2.5-VL --------------------------------------------------------------------

TINY_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128)
TINY_VISION = dict(depth=1, embed_dim=32, num_heads=2, patch_size=14, spatial_merge_size=2,
                   temporal_patch_size=2)


def make_qwen2_vl(words: list[str], *, variant: str = "qwen2_vl", text: dict | None = None,
                  vision: dict | None = None, min_pixels: int = 56 * 56, max_pixels: int = 224 * 224,
                  seed: int = 0, tokenizer=None) -> tuple[Any, Any]:
    """(random Qwen2-VL / Qwen2.5-VL model, Qwen2VLProcessor / Qwen2_5_VLProcessor), in memory, fp32.

    text:   overrides of TINY_TEXT (hidden_size, num_hidden_layers, num_attention_heads,
            num_key_value_heads, intermediate_size, ...)
    vision: overrides of TINY_VISION (depth, embed_dim [Qwen2-VL] / hidden_size [Qwen2.5-VL], num_heads,
            patch_size, spatial_merge_size, ...). One visual token covers (patch_size*merge)^2 pixels.
    """
    import transformers as tf

    if variant not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"variant must be 'qwen2_vl' or 'qwen2_5_vl', got {variant!r}")
    tokenizer = tokenizer or build_tokenizer(words, variant)
    text_cfg = {**TINY_TEXT, **(text or {})}
    vis = {**TINY_VISION, **(vision or {})}
    head_dim = text_cfg["hidden_size"] // text_cfg["num_attention_heads"]
    # M-RoPE splits the rotary half-dim into (temporal, height, width) sections
    half = head_dim // 2
    section = [half - 2 * (half // 4) * 1, half // 4, half // 4]
    text_cfg = {**text_cfg, "vocab_size": len(tokenizer), "max_position_embeddings": 32768,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
                "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
                "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    image_id, video_id, vs_id, ve_id = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                            "<|vision_end|>")
    if variant == "qwen2_vl":
        vis = {"hidden_size": text_cfg["hidden_size"], **vis}  # Qwen2-VL: hidden_size = merger output
        cfg_cls, model_cls, proc_cls = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor
    else:
        emb = vis.pop("embed_dim", None)
        vis = {"hidden_size": emb or 32, "intermediate_size": 2 * (emb or 32),
               "out_hidden_size": text_cfg["hidden_size"], "window_size": 112,
               "fullatt_block_indexes": [vis.get("depth", 1) - 1], **vis}
        cfg_cls, model_cls = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration
        proc_cls = tf.Qwen2_5_VLProcessor
    config = cfg_cls(text_config=text_cfg, vision_config=vis, image_token_id=image_id, video_token_id=video_id,
                     vision_start_token_id=vs_id, vision_end_token_id=ve_id, tie_word_embeddings=False)
    _seed(seed)
    model = model_cls(config).eval()
    image_processor = tf.Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=vis["patch_size"],
        temporal_patch_size=vis["temporal_patch_size"], merge_size=vis["spatial_merge_size"])
    video_processor = tf.Qwen2VLVideoProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=vis["patch_size"],
        temporal_patch_size=vis["temporal_patch_size"], merge_size=vis["spatial_merge_size"])
    processor = proc_cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                         chat_template=tokenizer.chat_template)
    return model, processor


def build_qwen2_vl(out_dir: str | Path, words: list[str], **kwargs: Any) -> Path:
    """Save a random tiny Qwen2-VL (or variant="qwen2_5_vl") to `out_dir`; see `make_qwen2_vl`."""
    model, processor = make_qwen2_vl(words, **kwargs)
    return save_model(model, processor, out_dir)


# --- Qwen3-VL (dense and MoE) ---------------------------------------------------------------------

TINY_QWEN3_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                         spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                         deepstack_visual_indexes=[0, 1])
TINY_QWEN3_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)


def make_qwen3_vl(words: list[str], *, moe: bool = False, text: dict | None = None, vision: dict | None = None,
                  min_pixels: int = 64 * 64, max_pixels: int = 256 * 256, seed: int = 0,
                  tokenizer=None) -> tuple[Any, Any]:
    """(random Qwen3VLForConditionalGeneration, or moe=True Qwen3VLMoeForConditionalGeneration, with its
    Qwen3VLProcessor), in memory, fp32. As the real ones: 16 px patches merged 2 x 2 (32 px per visual
    token), q/k RMS norms, interleaved M-RoPE, DeepStack features from vision blocks
    `deepstack_visual_indexes` added after the first LLM layers, and video frames separated by timestamps
    ("<0.5 seconds>", so "seconds" joins the vocabulary). text / vision: overrides of TINY_TEXT /
    TINY_QWEN3_VISION."""
    import transformers as tf

    tokenizer = tokenizer or build_tokenizer(list(words) + ["seconds"], "qwen3_vl")
    text_cfg = {**TINY_TEXT, **(TINY_QWEN3_MOE if moe else {}), **(text or {})}
    vis = {**TINY_QWEN3_VISION, **(vision or {}), "out_hidden_size": text_cfg["hidden_size"]}
    head_dim = text_cfg["hidden_size"] // text_cfg["num_attention_heads"]
    half = head_dim // 2  # interleaved M-RoPE: (t, h, w) sections of the rotary half-dim, as [24, 20, 20] of 64
    section = [half - 2 * (half // 4), half // 4, half // 4]
    text_cfg = {**text_cfg, "head_dim": head_dim, "vocab_size": len(tokenizer), "max_position_embeddings": 32768,
                "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": section,
                                    "mrope_interleaved": True},
                "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
                "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    image_id, video_id, vs_id, ve_id = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                            "<|vision_end|>")
    cfg_cls, model_cls = ((tf.Qwen3VLMoeConfig, tf.Qwen3VLMoeForConditionalGeneration) if moe
                          else (tf.Qwen3VLConfig, tf.Qwen3VLForConditionalGeneration))
    config = cfg_cls(text_config=text_cfg, vision_config=vis, image_token_id=image_id, video_token_id=video_id,
                     vision_start_token_id=vs_id, vision_end_token_id=ve_id, tie_word_embeddings=False)
    _seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # trained q/k norms are not all ones: skipping one must show in layer-0 attention
        for layer in model.model.language_model.layers:
            layer.self_attn.q_norm.weight.uniform_(0.5, 2.0)
            layer.self_attn.k_norm.weight.uniform_(0.5, 2.0)
    return model, _qwen3_vl_processor(tokenizer, vis, min_pixels, max_pixels)


def _qwen3_vl_processor(tokenizer: Any, vis: dict, min_pixels: int, max_pixels: int) -> Any:
    """Qwen3-VL's processor (Qwen3.5 takes the same) over the tiny vision config `vis`."""
    import transformers as tf

    grid = dict(patch_size=vis["patch_size"], temporal_patch_size=vis["temporal_patch_size"],
                merge_size=vis["spatial_merge_size"])
    image_processor = tf.Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels,
                                                  image_mean=[0.5] * 3, image_std=[0.5] * 3, **grid)
    video_processor = tf.Qwen3VLVideoProcessor(size={"shortest_edge": min_pixels, "longest_edge": 8 * max_pixels},
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3, **grid)
    return tf.Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=video_processor, chat_template=tokenizer.chat_template)


def build_qwen3_vl(out_dir: str | Path, words: list[str], **kwargs: Any) -> Path:
    """Save a random tiny Qwen3-VL (moe=True: Qwen3-VL-MoE) to `out_dir`; see `make_qwen3_vl`."""
    model, processor = make_qwen3_vl(words, **kwargs)
    return save_model(model, processor, out_dir)


# --- Qwen3.5 (hybrid linear / softmax attention) --------------------------------------------------

# layer 0 is linear attention and layer 1 the first softmax layer (the probe layer), as layers 0-2 / 3 of
# Qwen3.5-27B; a linear layer after it keeps the recurrent state in play during generation
TINY_QWEN3_5_LAYERS = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
TINY_QWEN3_5_TEXT = dict(head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                         linear_value_head_dim=16, linear_conv_kernel_dim=4)


def make_qwen3_5(words: list[str], *, text: dict | None = None, vision: dict | None = None,
                 min_pixels: int = 64 * 64, max_pixels: int = 256 * 256, seed: int = 0,
                 tokenizer=None) -> tuple[Any, Any]:
    """(random Qwen3_5ForConditionalGeneration, Qwen3VLProcessor), in memory, fp32. As the real ones: a
    decoder of Gated DeltaNet linear-attention layers and gated softmax-attention layers (`layer_types`,
    TINY_QWEN3_5_LAYERS unless text overrides it), q/k RMS norms (zero-centred weights), interleaved M-RoPE
    on a quarter of the head dims (partial_rotary_factor 0.25), Qwen3-VL's 32 px visual tokens and video
    timestamps, no DeepStack. text / vision: overrides of TINY_TEXT + TINY_QWEN3_5_TEXT / TINY_QWEN3_VISION."""
    import transformers as tf

    tokenizer = tokenizer or build_tokenizer(list(words) + ["seconds"], "qwen3_5")
    text_cfg = {**TINY_TEXT, **TINY_QWEN3_5_TEXT, "layer_types": list(TINY_QWEN3_5_LAYERS), **(text or {})}
    text_cfg["num_hidden_layers"] = len(text_cfg["layer_types"])
    vis = {k: v for k, v in {**TINY_QWEN3_VISION, **(vision or {})}.items() if k != "deepstack_visual_indexes"}
    vis["out_hidden_size"] = text_cfg["hidden_size"]
    rotary_half = int(text_cfg["head_dim"] * 0.25) // 2  # real: head_dim 256 -> 64 rotary dims, sections [11, 11, 10]
    section = [rotary_half - 2 * (rotary_half // 3), rotary_half // 3, rotary_half // 3]
    text_cfg = {**text_cfg, "vocab_size": len(tokenizer), "max_position_embeddings": 32768,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e7, "mrope_section": section,
                                    "mrope_interleaved": True, "partial_rotary_factor": 0.25},
                "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
                "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    image_id, video_id, vs_id, ve_id = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                            "<|vision_end|>")
    config = tf.Qwen3_5Config(text_config=text_cfg, vision_config=vis, image_token_id=image_id,
                              video_token_id=video_id, vision_start_token_id=vs_id, vision_end_token_id=ve_id,
                              tie_word_embeddings=False)
    _seed(seed)
    model = tf.Qwen3_5ForConditionalGeneration(config).eval()
    with torch.no_grad():  # trained norms are not at their zero init: skipping one must show in the probe layer
        for layer in model.model.language_model.layers:
            if hasattr(layer, "self_attn"):
                layer.self_attn.q_norm.weight.uniform_(-0.5, 1.0)
                layer.self_attn.k_norm.weight.uniform_(-0.5, 1.0)
            layer.input_layernorm.weight.uniform_(-0.3, 0.3)
    return model, _qwen3_vl_processor(tokenizer, vis, min_pixels, max_pixels)


def build_qwen3_5(out_dir: str | Path, words: list[str], **kwargs: Any) -> Path:
    """Save a random tiny Qwen3.5 to `out_dir`; see `make_qwen3_5`."""
    model, processor = make_qwen3_5(words, **kwargs)
    return save_model(model, processor, out_dir)


# --- LLaVA-OneVision-1.5 (transformers >= 5.25) ---------------------------------------------------------

TINY_OV15_VISION = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                        spatial_merge_size=2)


def make_llava_onevision1_5(words: list[str], *, text: dict | None = None, vision: dict | None = None,
                            min_pixels: int = 56 * 56, max_pixels: int = 224 * 224, seed: int = 0,
                            tokenizer=None) -> tuple[Any, Any]:
    """(random LlavaOnevision15ForConditionalGeneration, its processor), in memory, fp32. As the real ones: a
    native-resolution vision tower (2-D RoPE, a CLS token per image) whose merger turns 2 x 2 patches of 14 px
    into one visual token (28 px), in front of a Qwen3 LLM (q/k RMS norms) with plain 1-D positions; images
    and videos are Qwen2-VL-processed without temporal patches. text / vision: overrides of TINY_TEXT /
    TINY_OV15_VISION. Needs transformers >= 5.25 (the first release with the family)."""
    import transformers as tf

    if not hasattr(tf, "LlavaOnevision15ForConditionalGeneration"):
        raise ImportError(f"LLaVA-OneVision-1.5 needs transformers >= 5.25; this is {tf.__version__}")
    tokenizer = tokenizer or build_tokenizer(words, "qwen2_vl")
    text_cfg = {**TINY_TEXT, **(text or {})}
    head_dim = text_cfg["hidden_size"] // text_cfg["num_attention_heads"]
    text_cfg = {"model_type": "qwen3", **text_cfg, "head_dim": head_dim, "vocab_size": len(tokenizer),
                "max_position_embeddings": 32768, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
                "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
                "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    vis = {**TINY_OV15_VISION, **(vision or {}), "out_hidden_size": text_cfg["hidden_size"]}
    image_id, video_id, vs_id, ve_id = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                            "<|vision_end|>")
    config = tf.LlavaOnevision15Config(text_config=text_cfg, vision_config=vis, image_token_id=image_id,
                                       video_token_id=video_id, vision_start_token_id=vs_id,
                                       vision_end_token_id=ve_id, tie_word_embeddings=False)
    _seed(seed)
    model = tf.LlavaOnevision15ForConditionalGeneration(config).eval()
    with torch.no_grad():  # trained q/k norms are not all ones: skipping one must show in layer-0 attention
        for layer in model.model.language_model.layers:
            layer.self_attn.q_norm.weight.uniform_(0.5, 2.0)
            layer.self_attn.k_norm.weight.uniform_(0.5, 2.0)
    grid = dict(patch_size=vis["patch_size"], temporal_patch_size=1, merge_size=vis["spatial_merge_size"])
    image_processor = tf.Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, **grid)
    video_processor = tf.Qwen2VLVideoProcessor(min_pixels=min_pixels, max_pixels=max_pixels, **grid)
    processor = tf.Exaone4_5_Processor(image_processor=image_processor, tokenizer=tokenizer,
                                       video_processor=video_processor, chat_template=tokenizer.chat_template)
    return model, processor


def build_llava_onevision1_5(out_dir: str | Path, words: list[str], **kwargs: Any) -> Path:
    """Save a random tiny LLaVA-OneVision-1.5 to `out_dir`; see `make_llava_onevision1_5`."""
    model, processor = make_llava_onevision1_5(words, **kwargs)
    return save_model(model, processor, out_dir)


# --- LLaVA-OneVision ----------------------------------------------------------------------------

TINY_SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                   patch_size=14, image_size=56)


def make_llava_onevision(words: list[str], *, text: dict | None = None, vision: dict | None = None,
                         grid_pinpoints: list[list[int]] | None = None, seed: int = 0,
                         tokenizer=None) -> tuple[Any, Any]:
    """(random LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor), in memory, fp32.

    Vision: a tiny SigLIP (TINY_SIGLIP overrides), base image `image_size` px -> (image_size/patch)^2
    tokens; crops from `grid_pinpoints` (multiples of image_size), each crop the same size.
    """
    import transformers as tf

    tokenizer = tokenizer or build_tokenizer(words, "llava_onevision")
    text_cfg = {**TINY_TEXT, **(text or {})}
    text_cfg = {"model_type": "qwen2", **text_cfg, "vocab_size": len(tokenizer), "max_position_embeddings": 32768,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
                "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
                "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    vis = {"model_type": "siglip_vision_model", **TINY_SIGLIP, "vision_use_head": False, **(vision or {})}
    size = vis["image_size"]
    pinpoints = grid_pinpoints or [[size * a, size * b] for a in (1, 2) for b in (1, 2)]
    image_id, video_id = _ids(tokenizer, "<image>", "<video>")
    config = tf.LlavaOnevisionConfig(text_config=text_cfg, vision_config=vis, image_token_index=image_id,
                                     video_token_index=video_id, vision_feature_select_strategy="full",
                                     vision_feature_layer=-1, image_grid_pinpoints=pinpoints,
                                     vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False)
    _seed(seed)
    model = tf.LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = tf.LlavaOnevisionImageProcessorPil(
        size={"height": size, "width": size}, crop_size={"height": size, "width": size},
        image_grid_pinpoints=pinpoints, do_pad=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    num_image_tokens = (size // vis["patch_size"]) ** 2
    # the video processor's own defaults are CLIP's mean/std: frames would reach the tower scaled unlike images
    video_processor = tf.LlavaOnevisionVideoProcessor(size={"height": size, "width": size},
                                                      image_mean=image_processor.image_mean,
                                                      image_std=image_processor.image_std,
                                                      resample=image_processor.resample)
    processor = tf.LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        num_image_tokens=num_image_tokens, vision_feature_select_strategy="full",
        chat_template=tokenizer.chat_template, vision_aspect_ratio="anyres_max_9")
    return model, processor


def build_llava_onevision(out_dir: str | Path, words: list[str], **kwargs: Any) -> Path:
    """Save a random tiny LLaVA-OneVision to `out_dir`; see `make_llava_onevision`."""
    model, processor = make_llava_onevision(words, **kwargs)
    return save_model(model, processor, out_dir)


# --- VILA1.5 ------------------------------------------------------------------------------------------

# The VILA1.5 system prompt's words (vicuna_v1), so the tiny tokenizer spells the real prompt
VILA_SYSTEM_WORDS = ("a chat between a curious user and an artificial intelligence assistant the assistant gives "
                     "helpful detailed and polite answers to the user's questions").split()
# SigLIP 70 px / 14 px patches: 5 x 5 patches, padded to 6 x 6 and merged 2 x 2 into 3 x 3 tokens (the
# released 384 px tower: 27 x 27 patches, also odd, padded to 28 x 28: 14 x 14 = 196 tokens)
TINY_VILA_SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        patch_size=14, image_size=70)


def vila_top_config(llm_cfg: dict, vision_cfg: dict, projector_cfg: dict, mm_hidden_size: int, hidden_size: int,
                    image_aspect_ratio: str = "resize") -> dict:
    """The top config.json of a VILA1.5 folder, with the released VILA1.5-3B's keys
    (tests/fixtures/vila/README.md says where they were read)."""
    return {
        "_name_or_path": "tiny-vila1.5", "architectures": ["LlavaLlamaModel"], "drop_path_rate": 0.0,
        "hidden_size": hidden_size, "image_aspect_ratio": image_aspect_ratio, "interpolate_mode": "linear",
        "llm_cfg": {**llm_cfg, "_name_or_path": "./llm"}, "mm_hidden_size": mm_hidden_size,
        "mm_projector_cfg": {**projector_cfg, "_name_or_path": "./mm_projector"}, "mm_projector_lr": None,
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "cls_patch",
        "mm_vision_select_layer": -2, "model_dtype": "torch.float32", "model_type": "llava_llama",
        "num_video_frames": 8, "resume_path": "./vlm", "s2": False, "s2_max_split_size": 336,
        "s2_scales": "336,672,1008", "transformers_version": "4.36.2", "tune_language_model": True,
        "tune_mm_projector": True, "tune_vision_tower": True, "vision_resolution": -1,
        "vision_tower_cfg": {**vision_cfg, "_name_or_path": "./vision_tower"}}


def build_vila(out_dir: str | Path, words: list[str], *, text: dict | None = None, vision: dict | None = None,
               projector: str = "mlp_downsample", image_aspect_ratio: str = "resize", seed: int = 0) -> Path:
    """Save a random tiny VILA1.5 checkpoint folder to `out_dir`, laid out as the released ones:
    config.json (model_type llava_llama), llm/ (LlamaForCausalLM + tokenizer), vision_tower/
    (SiglipVisionModel + SiglipImageProcessor config) and mm_projector/ (config.json + model.safetensors with
    the authors' `layers.*` keys). Built with transformers' classes and our projector; fp32."""
    import json

    import transformers as tf
    from safetensors.torch import save_file

    from predictor.adapters.vila_model import VilaProjector

    out = Path(out_dir)
    tokenizer = build_tokenizer(list(words) + list(VILA_SYSTEM_WORDS), "vila")
    text_cfg = {**TINY_TEXT, **(text or {})}
    _seed(seed)
    llm_config = tf.LlamaConfig(**text_cfg, vocab_size=len(tokenizer), max_position_embeddings=4096,
                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    llm = tf.LlamaForCausalLM(llm_config).eval()
    llm.generation_config.do_sample = False
    llm.generation_config.eos_token_id = tokenizer.eos_token_id
    llm.generation_config.pad_token_id = tokenizer.pad_token_id
    llm.save_pretrained(out / "llm", safe_serialization=True)
    tokenizer.save_pretrained(out / "llm")
    vis = {**TINY_VILA_SIGLIP, **(vision or {})}
    tower = tf.SiglipVisionModel(tf.SiglipVisionConfig(**vis)).eval()
    tower.save_pretrained(out / "vision_tower", safe_serialization=True)
    size = vis["image_size"]
    tf.SiglipImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                               image_std=[0.5] * 3).save_pretrained(out / "vision_tower")
    proj = VilaProjector(projector, vis["hidden_size"], text_cfg["hidden_size"])
    with torch.no_grad():  # a trained LayerNorm is not the identity
        for m in proj.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 2.0), m.bias.uniform_(-0.5, 0.5)
    (out / "mm_projector").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in proj.state_dict().items()},
              str(out / "mm_projector" / "model.safetensors"), metadata={"format": "pt"})
    projector_cfg = {"architectures": ["MultimodalProjector"], "mm_projector_type": projector,
                     "model_type": "v2l_projector", "torch_dtype": "float32"}
    (out / "mm_projector" / "config.json").write_text(json.dumps(projector_cfg, indent=2))
    top = vila_top_config(llm.config.to_dict(), tower.config.to_dict(), projector_cfg, vis["hidden_size"],
                          text_cfg["hidden_size"], image_aspect_ratio)
    (out / "config.json").write_text(json.dumps(top, indent=2))
    return out


# --- saving -------------------------------------------------------------------------------------

def save_model(model: Any, processor: Any, out_dir: str | Path) -> Path:
    """`save_pretrained` model (safetensors), processor, tokenizer and generation config into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.do_sample = False
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    model.generation_config.pad_token_id = model.config.text_config.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


DEFAULT_WORDS = ("what is in the image describe this picture red green blue yellow circle square triangle "
                 "object shape colour color left right of above below how many yes no").split()
