"""The predictor's input: the probe layer's attention of the instruction tokens over the visual tokens.

The probe layer is the adapter's `probe_layer`: the decoder's first softmax-attention layer, layer 0
for every family with softmax attention throughout (hence "layer 0" in the names here). A hybrid
decoder (Qwen3.5: Gated DeltaNet linear attention in layers 0-2, gated softmax attention in layer 3)
has no attention probabilities before it; there the layers before the probe run in full over the
prompt prefix the instruction sees (they are causal: the prefix's states are exact), and the probe
layer's q/k are taken from their output, as below.

One function, `instruction_attention`, computes it for both users: data_gen's labels (through
`Adapter.layer0_attention(prepared)`) and the runtime's scores (on its already-embedded context), so
a predictor is served exactly the features it was trained on.

It is computed from queries and keys only. The full layer 0 costs S x S scores (and values, and the
output projection); the predictor needs the N_i instruction rows and the N_v visual columns, so we
project queries for those rows and keys for the positions they can see, and take one softmax per
row over exactly the keys it attends to causally: N_i x K scores instead of S x S.

Precision: layer norm, projections and q/k norms run in the model's dtype, as in the model's own
forward; rotary (cos/sin included), scores and softmax run in fp32 (bf16 q.k overflows in Qwen2
models). transformers applies rotary in the model's dtype, so under bf16 this is not bit-equal to
the model's own layer 0 (0.45% of the largest value on the reference model; tests bound it). fp32 is
deliberate: what must match is the feature at label time and at serve time, and both call this
function, so they cannot drift; fp32 rotary also removes one dtype-dependent rounding, so labels
made in fp32 and serving in bf16 differ a little less.
In fp32 it equals the model's own layer-0 probabilities (tests/test_adapters.py checks it against
a captured forward and an eager one).
"""
from __future__ import annotations

import torch


@torch.no_grad()
def instruction_attention(adapter, embeds: torch.Tensor, position_ids: torch.Tensor,
                          instruction_positions: torch.Tensor, visual_positions: torch.Tensor,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-0 attention of the instruction rows over the visual columns.

    embeds: (1, S, D) prompt embeddings (visual features merged in); position_ids: the adapter's
    (1, S) or (3, 1, S); instruction_positions (N_i,), visual_positions (N_v,) long prompt indices.
    Returns (heads (H, N_v), mean (N_v,)) float32 on the embeddings' device: per head averaged over
    the instruction rows, and that averaged over heads.
    """
    if instruction_positions.numel() == 0:
        raise ValueError("the prompt has no instruction tokens: layer-0 instruction attention is undefined")
    rows = instruction_positions.to(embeds.device).long()
    cols = visual_positions.to(embeds.device).long()
    key_len = int(rows.max()) + 1  # the last instruction row sees keys [0, key_len)
    q, k, scale = adapter.layer0_qk(embeds, position_ids, rows, key_len)  # probe layer: (H, N_i, d), (H, K, d)
    scores = torch.matmul(q, k.transpose(1, 2)) * scale  # (H, N_i, K)
    causal = torch.arange(key_len, device=scores.device)[None, :] > rows[:, None]  # (N_i, K)
    probs = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
    heads = probs[:, :, cols].mean(dim=1)  # (H, N_v)
    return heads, heads.mean(dim=0)


def decoder_qk(lm: torch.nn.Module, embeds: torch.Tensor, position_ids: torch.Tensor,
               query_positions: torch.Tensor, key_len: int, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Queries and keys of decoder layer `layer` (the probe layer) of a Llama-style stack `lm`
    (`.layers[l].input_layernorm`, `.layers[l].self_attn.{q,k}_proj` and optional `{q,k}_norm`,
    `.rotary_emb`): see `Adapter.layer0_qk`. Layers before `layer` run in full over the first key_len
    positions (the model's own modules, rotary in the model's dtype as in its forward). Handles a gated
    q_proj (Qwen3.5: queries and output gates interleaved per head; the gate acts after the softmax) and
    partial rotary (the rotary dims come first, the rest pass through)."""
    block, attn = lm.layers[layer], lm.layers[layer].self_attn
    _refuse_unreproduced(attn, key_len)
    h = embeds[:, :key_len]
    if layer > 0:
        pos = position_ids[..., :key_len]
        model_rope = lm.rotary_emb(h, pos)
        for earlier in lm.layers[:layer]:
            h = earlier(h, position_embeddings=model_rope, attention_mask=None, position_ids=None)
    x = block.input_layernorm(h)  # (1, K, D)
    # an fp32 input makes transformers' rotary return fp32 cos/sin (it casts them to the input's dtype)
    cos, sin = lm.rotary_emb(h.float(), position_ids[..., :key_len])  # (1, K, r), M-RoPE already interleaved
    cos, sin = cos[0], sin[0]
    n_heads = attn.config.num_attention_heads
    head_dim = getattr(attn, "head_dim", attn.config.hidden_size // n_heads)
    q = attn.q_proj(x[0, query_positions])
    if q.shape[-1] == 2 * n_heads * head_dim:  # gated attention: per head [query | gate]
        q = q.view(-1, n_heads, 2 * head_dim)[..., :head_dim]
    q = q.reshape(-1, n_heads, head_dim)  # (N_q, H, d)
    k = attn.k_proj(x[0]).view(key_len, -1, head_dim)  # (K, H_kv, d)
    if getattr(attn, "q_norm", None) is not None:  # Qwen3-style per-head RMS norms, before rotary
        q = attn.q_norm(q)
    if getattr(attn, "k_norm", None) is not None:
        k = attn.k_norm(k)
    q, k = q.float().transpose(0, 1), k.float().transpose(0, 1)  # (H, N_q, d), (H_kv, K, d)
    q = _rotary(q, cos[query_positions], sin[query_positions])
    k = _rotary(k, cos, sin)
    k = k.repeat_interleave(n_heads // k.shape[0], dim=0)  # head h reads kv head h // n_rep (repeat_kv)
    scale = float(getattr(attn, "scaling", head_dim ** -0.5))
    return q, k, scale


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary on the first cos.shape[-1] dims of x (all of them unless the model's rotary is partial)."""
    r = cos.shape[-1]
    rot = x[..., :r] * cos + _rotate_half(x[..., :r]) * sin
    return rot if r == x.shape[-1] else torch.cat([rot, x[..., r:]], dim=-1)


def _refuse_unreproduced(attn: torch.nn.Module, key_len: int) -> None:
    """Layer-0 attention features the q/k path does not reproduce: refused by name, never scored wrong."""
    window = getattr(attn, "sliding_window", None)
    if window is not None and key_len > window:  # rows would lose keys older than the window
        raise ValueError(f"layer-0 attention has sliding_window={window} but the instruction sees {key_len} keys; "
                         f"the q/k path computes full causal attention. Write the window into the adapter's "
                         f"layer0_qk (or use a model whose layer 0 attends fully)")
    softcap = getattr(attn.config, "attn_logit_softcapping", None)
    if softcap is not None:
        raise ValueError(f"layer-0 attention has attn_logit_softcapping={softcap}, which the q/k path does not "
                         f"apply; override the adapter's layer0_qk for this family")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)
