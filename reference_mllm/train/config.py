"""The reference MLLM's training recipe: one dataclass, recorded in the saved model's training.json."""
from __future__ import annotations

from dataclasses import dataclass, field

from reference_mllm import prompts
from reference_mllm.clips import ClipConfig
from reference_mllm.scenes import SceneConfig

DEFAULT_OUT = "checkpoints/reference-qwen2vl"
VIDEO_OUT = "checkpoints/reference-qwen2vl-video"
QWEN3_5_OUT = "checkpoints/reference-qwen3_5"
CHAT_OUT = "checkpoints/reference-qwen2vl-chat"
MODALITIES = ("image", "video")
ARCHS = ("qwen2_vl", "qwen3_5")
# (softmax-attention layer, head) of the guided lookup (losses.guidance): the naming word onto the object, the
# answer position onto the naming word, the answer position onto the question's type word. Softmax layer 0
# (the model's probe layer: decoder layer 0, or for a hybrid decoder the first after its linear layers) is the
# predictor's input and gets only the weak cue and the position bias below. The indices count softmax-attention
# layers only, as the model's own output_attentions does.
GUIDED = ((1, 0), (2, 0), (2, 1))


@dataclass
class RefTrainConfig:
    out: str = DEFAULT_OUT
    seed: int = 0
    steps: int = 4000
    visual_tokens_per_step: int = 1024  # batch 16 at 224x224 (64 tokens each), 8 at 224x448
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    aux_weight: float = 1.0  # the vision tower's own signal: per-token colour and shape classifiers (losses.AuxHead)
    label_smoothing: float = 0.1  # on the answer loss: keeps the answer logit off saturation (gae, BENCHMARKS.md)
    # Attention guidance (-log of attention mass) along the lookup (GUIDED): a model this small learns the
    # lookup only with it, and faster with the type hop (BENCHMARKS.md, "Why the reference MLLM's training terms exist").
    att_weight: float = 1.0
    # Layer 0 gets two properties the method assumes of real MLLMs, and nothing else:
    # a weak instruction cue (0: off): head 0's attention mass from the naming word onto the object is pushed
    # up to `l0_cue` and no further (a hinge), so layer-0 attention carries a real but partial signal of
    # which object the question names;
    l0_cue: float = 0.1
    # a position bias (0: off): the slope of log layer-0 attention (instruction rows over the visual tokens,
    # the predictor's input) against the token's row in the image is pushed up to this (a hinge): like real
    # MLLMs' early layers, attention grows towards the end of the image, nearest the text.
    l0_position_bias: float = 2.0
    # pruning as augmentation: the share of training scenes whose visual tokens are partly dropped (masked out
    # of the attention) as a pruning method would, the named object's always kept (batches.drop_tokens).
    # It keeps the model from relying on empty background tokens as attention sinks, so that it answers from
    # whatever a selection keeps (BENCHMARKS.md, "Why the reference MLLM's training terms exist").
    token_drop: float = 0.5
    # (height, width) px and how often each is drawn; 224x224 is the main size
    sizes: list[list[int]] = field(default_factory=lambda: [[224, 224], [224, 448], [448, 224]])
    size_weights: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    # the scenes (reference_mllm.scenes.SceneConfig): synthetic_scenes' defaults, so that the source as a user
    # builds it asks what this model was trained to answer
    scenes: dict = field(default_factory=lambda: SceneConfig().to_dict())
    # "video": train on `synthetic_video` clips (frame pairs x 28 px cells) instead of images; `video_config`
    # is the video reference model's recipe
    modality: str = "image"
    # the clips (reference_mllm.clips.ClipConfig), used when modality="video": synthetic_video's defaults
    clips: dict = field(default_factory=lambda: ClipConfig().to_dict())
    # the prompts trained on (modality "image"), each kind with its share of the steps (reference_mllm.prompts):
    # "single" (one image, one question), "two_images" (the question about one of two images), "multi_turn"
    # (a conversation: the first question with its answer, then the second). Only "single": the committed
    # recipe as it was; `chat_config` is the chat model's mix.
    prompt_mix: dict = field(default_factory=lambda: {"single": 1.0})
    # start from this saved reference model's weights (same vocabulary; "" : from scratch)
    init: str = ""
    eval_items: int = 200  # held-out scenes per evaluated size (and per chat prompt kind)
    eval_sizes: list[list[int]] = field(default_factory=lambda: [[224, 224], [224, 448], [448, 448]])
    threads: int = 1  # one thread: with other processes on the cores, 2 threads ran 5-7x slower
    # initializer_range 0.1 (transformers' default: 0.02): the answer path (object -> question word -> answer
    # position) is three matrices deep, and from the smaller init it does not start learning in the steps this
    # recipe has (BENCHMARKS.md, "Why the reference MLLM's training terms exist").
    text: dict = field(default_factory=lambda: dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=2,
                                                    num_key_value_heads=2, intermediate_size=256,
                                                    initializer_range=0.1))
    vision: dict = field(default_factory=lambda: dict(depth=2, embed_dim=64, num_heads=4))
    max_pixels: int = 896 * 896  # the processor leaves scenes up to this size unresized
    # the architecture: "qwen2_vl" (the committed reference model) or "qwen3_5" (a hybrid decoder: the
    # recipe `qwen3_5_config`, whose text config's layer_types put linear attention before the probe layer)
    arch: str = "qwen2_vl"
    def scene_config(self) -> SceneConfig:
        return SceneConfig(**self.scenes)

    def validate(self) -> None:
        """Raise ValueError naming the field and the fix; called before any work."""
        if len(self.sizes) != len(self.size_weights):
            raise ValueError(f"sizes ({len(self.sizes)}) and size_weights ({len(self.size_weights)}) differ in length")
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r}: expected one of {list(ARCHS)}")
        types = self.text.get("layer_types") or ["full_attention"] * int(self.text["num_hidden_layers"])
        layers = sum(t != "linear_attention" for t in types)  # softmax-attention layers
        heads = int(self.text["num_attention_heads"])
        if layers <= max(layer for layer, _ in GUIDED) or heads <= max(head for _, head in GUIDED):
            raise ValueError(f"text: {layers} layers x {heads} heads; the recipe guides (layer, head) "
                             f"{list(GUIDED)} and leaves layer 0 alone, so it needs at least "
                             f"{max(layer for layer, _ in GUIDED) + 1} layers and {max(h for _, h in GUIDED) + 1} heads")
        if not 0.0 <= self.l0_cue < 1.0:
            raise ValueError(f"l0_cue={self.l0_cue}: expected an attention mass in [0, 1) (0: no cue)")
        if self.l0_position_bias < 0:
            raise ValueError(f"l0_position_bias={self.l0_position_bias}: expected a slope >= 0 (0: no bias)")
        if not 0.0 <= self.token_drop <= 1.0:
            raise ValueError(f"token_drop={self.token_drop}: expected a probability in [0, 1] (0: off)")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality={self.modality!r}: expected one of {list(MODALITIES)}")
        kinds = [k for k, w in self.prompt_mix.items() if w > 0]
        if not kinds or any(k not in prompts.KINDS or w < 0 for k, w in self.prompt_mix.items()):
            raise ValueError(f"prompt_mix={self.prompt_mix}: expected weights >= 0, some > 0, of the kinds "
                             f"{list(prompts.KINDS)}")
        if self.modality == "video" and kinds != ["single"]:
            raise ValueError(f"prompt_mix={self.prompt_mix}: the video recipe trains on single clips only")
        self.scene_config()  # bad scene settings fail here
        ClipConfig(**self.clips)


def qwen3_5_config(**changes) -> RefTrainConfig:
    """The Qwen3.5-architecture reference model's recipe (`python -m reference_mllm.train --arch qwen3_5`): the
    image recipe on transformers' Qwen3_5ForConditionalGeneration, whose decoder starts with a Gated DeltaNet
    linear-attention layer (as Qwen3.5's layers 0-2) before three gated softmax-attention layers: the first of
    them is the probe layer (cue and position bias), the other two carry the guided lookup. Its vision tower
    takes 14 px patches, so one visual token covers the scenes' 28 px cell as in the Qwen2-VL reference."""
    q35 = dict(out=QWEN3_5_OUT, arch="qwen3_5",
               text=dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=2, head_dim=32,
                         intermediate_size=256, initializer_range=0.1,
                         layer_types=["linear_attention"] + ["full_attention"] * 3,
                         linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=32,
                         linear_value_head_dim=32),
               vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, patch_size=14,
                           num_position_embeddings=1024))
    return RefTrainConfig(**{**q35, **changes})


def video_config(**changes) -> RefTrainConfig:
    """The video reference model's recipe (`python -m reference_mllm.train --video`): the image recipe on
    synthetic_video's 112 x 112 x 8-frame clips (64 video tokens), with `changes` on top."""
    video = dict(out=VIDEO_OUT, modality="video", steps=2200, sizes=[[112, 112]], size_weights=[1.0],
                 eval_sizes=[[112, 112]])
    return RefTrainConfig(**{**video, **changes})


def chat_config(**changes) -> RefTrainConfig:
    """The chat reference model's recipe (`python -m reference_mllm.train --chat`): the image recipe on a mix of
    single-image, two-image and two-turn prompts at 224 x 224, started from the committed reference model
    (same vocabulary), with `changes` on top."""
    chat = dict(out=CHAT_OUT, steps=1200, init=DEFAULT_OUT, warmup=50, lr=1e-3,
                prompt_mix={"single": 0.4, "two_images": 0.25, "multi_turn": 0.35})
    return RefTrainConfig(**{**chat, **changes})
