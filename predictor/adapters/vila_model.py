"""VILA1.5's model as one nn.Module: transformers' LLM and SigLIP tower, and the authors' projector (ours).

`VilaModel` holds `llm` (what `llm/config.json` names, through AutoModelForCausalLM), `vision_tower`
(SiglipVisionModel) and `mm_projector` (`VilaProjector`, whose `layers` are the authors' MultimodalProjector's, so
`mm_projector/model.safetensors` loads as is), with the surface the adapters' machinery uses:
`get_input_embeddings`, `lm_head`, `generate(inputs_embeds=...)`, `generation_config`; the decoder stack is
`llm.model`. `load_vila` checks the folder layout first (`read_layout`). The adapter is `vila.py`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from predictor.adapters.attention import ATTN_IMPL

IMAGE_TOKEN_INDEX = -200  # the authors' placeholder id (llava/constants.py); never embedded

# ---- the projector (llava/model/multimodal_projector/base_projector.py) ------------------------------

class Downsample2x2(nn.Module):
    """(n, p*p, c) patch tokens -> (n, ceil(p/2)^2, 4c): zero-pad the p x p map to even sides, concatenate each
    2 x 2 block as [(0,0), (0,1), (1,0), (1,1)], and flatten the merged grid column by column (as the
    VILA1.5 release's DownSampleBlock does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, c = x.shape
        side = int(round(length ** 0.5))
        if side * side != length:
            raise ValueError(f"mlp_downsample expects a square patch map, got {length} tokens")
        x = x.reshape(n, side, side, c)
        pad = side % 2
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, 1, 0, 1))  # one zero column right, one zero row below
        m = (side + pad) // 2
        x = x.reshape(n, m, 2, m, 2, c).permute(0, 3, 1, 2, 4, 5)  # (n, col, row, dy, dx, c)
        return x.reshape(n, m * m, 4 * c)


class VilaProjector(nn.Module):
    """The authors' MultimodalProjector: `layers` holds the same modules, so its state dict loads as is."""

    def __init__(self, kind: str, mm_hidden_size: int, hidden_size: int):
        super().__init__()
        self.kind = kind
        if kind == "mlp_downsample":
            self.layers = nn.Sequential(Downsample2x2(), nn.LayerNorm(4 * mm_hidden_size),
                                        nn.Linear(4 * mm_hidden_size, hidden_size), nn.GELU(),
                                        nn.Linear(hidden_size, hidden_size))
        elif kind == "linear":
            self.layers = nn.Linear(mm_hidden_size, hidden_size)
        elif re.fullmatch(r"mlp(\d+)x_gelu", kind):
            depth = int(kind[3:-6])
            mods: list[nn.Module] = [nn.Linear(mm_hidden_size, hidden_size)]
            for _ in range(1, depth):
                mods += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
            self.layers = nn.Sequential(*mods)
        else:
            raise ValueError(f"mm_projector_type={kind!r} is not supported (VILA1.5 uses mlp_downsample; linear and "
                             f"mlpNx_gelu also load); NVILA's mlp_downsample_3x3_fix and s2 projectors do not")

    @property
    def merge(self) -> int:
        """Side of the patch block one output token covers."""
        return 2 if self.kind == "mlp_downsample" else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _Config:
    """`model.config` as the tests and tools read it: text_config, vision_config, and the top config's keys."""

    def __init__(self, top: dict, text_config: Any, vision_config: Any):
        self.__dict__.update(top)
        self.text_config, self.vision_config = text_config, vision_config

    def __getattr__(self, name: str) -> Any:  # anything else (e.g. _attn_implementation): the LLM's config
        if name.startswith("__") or name in ("text_config", "vision_config"):
            raise AttributeError(name)
        return getattr(self.text_config, name)


class VilaModel(nn.Module):
    """LLM + vision tower + projector, with the surface the adapters' machinery uses."""

    def __init__(self, llm: nn.Module, vision_tower: nn.Module, mm_projector: VilaProjector, top: dict):
        super().__init__()
        self.llm, self.vision_tower, self.mm_projector = llm, vision_tower, mm_projector
        self.config = _Config(top, llm.config, vision_tower.config)
        self.select_layer = int(top.get("mm_vision_select_layer", -2))
        self.select_feature = top.get("mm_vision_select_feature", "cls_patch")

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    @property
    def lm_head(self) -> nn.Module:
        return self.llm.lm_head

    @property
    def generation_config(self):
        return self.llm.generation_config

    def generate(self, **kwargs):
        return self.llm.generate(**kwargs)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, tokens per image, D) projected visual tokens, in the projector's order."""
        dtype = next(self.vision_tower.parameters()).dtype
        out = self.vision_tower(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        feats = out.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            feats = feats[:, 1:]
        return self.mm_projector(feats.to(next(self.mm_projector.parameters()).dtype))

    def embed(self, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Token embeddings with `features` (M, D) written, in order, where input_ids is IMAGE_TOKEN_INDEX."""
        mask = input_ids == IMAGE_TOKEN_INDEX
        embeds = self.get_input_embeddings()(input_ids.masked_fill(mask, 0))
        if int(mask.sum()) != features.shape[0]:
            raise ValueError(f"the prompt has {int(mask.sum())} image-token slots for {features.shape[0]} "
                             f"visual tokens")
        return embeds.masked_scatter(mask[..., None].expand_as(embeds), features.to(embeds.dtype))

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """The LLM's attention (the tower keeps its own)."""
        self.llm.set_attn_implementation(attn_implementation)

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs):
        """The composed model's own forward (the tower runs on `pixel_values` every call): the LLM's output."""
        if inputs_embeds is None:
            feats = (self.encode_images(pixel_values).flatten(0, 1) if pixel_values is not None
                     else torch.zeros(0, self.llm.config.hidden_size, device=input_ids.device))
            inputs_embeds = self.embed(input_ids, feats)
        return self.llm(inputs_embeds=inputs_embeds, **kwargs)


# ---- loading -----------------------------------------------------------------------------------------

def _require(folder: Path, *names: str) -> None:
    for name in names:
        if not (folder / name).exists():
            raise FileNotFoundError(
                f"{folder.parent} is not a VILA1.5 checkpoint folder: {folder.name}/{name} is missing (expected "
                f"config.json, llm/, vision_tower/ and mm_projector/ as the released checkpoints have them)")


def read_layout(path: str | Path) -> dict:
    """The top config of a VILA1.5 folder, after checking every part is there; refuses what we do not run."""
    root = Path(path)
    if not (root / "config.json").exists():
        raise FileNotFoundError(f"{root} is not a VILA1.5 checkpoint folder: config.json is missing")
    top = json.loads((root / "config.json").read_text())
    if top.get("model_type") != "llava_llama":
        raise ValueError(f"adapter 'vila' expects a VILA checkpoint (model_type 'llava_llama'), but {root} has "
                         f"model_type={top.get('model_type')!r}; pick the matching model.adapter")
    for part, files in (("llm", ("config.json",)), ("vision_tower", ("config.json", "preprocessor_config.json")),
                        ("mm_projector", ("config.json", "model.safetensors"))):
        _require(root / part, *files)
    ratio = top.get("image_aspect_ratio", "resize")
    if top.get("s2") or top.get("dynamic_s2") or ratio not in ("resize", "pad"):
        raise ValueError(f"{root}: image_aspect_ratio={ratio!r}, s2={top.get('s2')!r}, "
                         f"dynamic_s2={top.get('dynamic_s2')!r}: only VILA1.5's single-tile images ('resize' or "
                         f"'pad', no S2) are supported; NVILA's dynamic S2 tiling is not")
    kind = json.loads((root / "mm_projector" / "config.json").read_text()).get("mm_projector_type")
    if kind not in ("mlp_downsample", "linear") and not re.fullmatch(r"mlp\d+x_gelu", str(kind)):
        raise ValueError(f"{root}/mm_projector: mm_projector_type={kind!r} is not supported (VILA1.5 uses "
                         f"mlp_downsample; linear and mlpNx_gelu also load); NVILA's 3 x 3 and S2 projectors do not")
    if top.get("mm_use_im_start_end") or top.get("mm_use_im_patch_token"):
        raise ValueError(f"{root}: mm_use_im_start_end / mm_use_im_patch_token are set; VILA1.5 checkpoints set "
                         f"neither, and the adapter writes no <im_start>/<im_patch> tokens")
    return top


def load_vila(path: str | Path, dtype: Any = torch.float32, device: str = "cpu",
              attn_implementation: str = ATTN_IMPL) -> VilaModel:
    import transformers as tf
    from safetensors.torch import load_file

    root = Path(path)
    top = read_layout(root)
    kw = dict(local_files_only=True, trust_remote_code=False)
    llm = tf.AutoModelForCausalLM.from_pretrained(root / "llm", dtype=dtype, attn_implementation=attn_implementation,
                                                  **kw)
    vcfg = tf.AutoConfig.from_pretrained(root / "vision_tower", **kw)
    if vcfg.model_type != "siglip_vision_model":
        raise ValueError(f"{root}/vision_tower is {vcfg.model_type!r}; the adapter runs SigLIP towers (VILA1.5-3B / "
                         f"8B / 13B); VILA1.5-40B's InternViT-6B has no transformers class")
    tower_attn = "sdpa" if attn_implementation == ATTN_IMPL else attn_implementation
    tower = tf.SiglipVisionModel.from_pretrained(root / "vision_tower", dtype=dtype, attn_implementation=tower_attn,
                                                 **kw)
    pcfg = json.loads((root / "mm_projector" / "config.json").read_text())
    projector = VilaProjector(pcfg.get("mm_projector_type", ""), int(top.get("mm_hidden_size", vcfg.hidden_size)),
                              int(llm.config.hidden_size))
    state = load_file(str(root / "mm_projector" / "model.safetensors"))
    try:
        projector.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{root}/mm_projector/model.safetensors does not match mm_projector_type "
                         f"{projector.kind!r}: {e}") from e
    first = next(llm.parameters())
    projector.to(dtype=first.dtype)
    return VilaModel(llm, tower, projector, top).to(device).eval()
