"""The predictor's input: layer-0 attention of the instruction tokens over the visual tokens.

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
    q, k, scale = adapter.layer0_qk(embeds, position_ids, rows, key_len)  # (H, N_i, d), (H, K, d)
    scores = torch.matmul(q, k.transpose(1, 2)) * scale  # (H, N_i, K)
    causal = torch.arange(key_len, device=scores.device)[None, :] > rows[:, None]  # (N_i, K)
    probs = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
    heads = probs[:, :, cols].mean(dim=1)  # (H, N_v)
    return heads, heads.mean(dim=0)


def decoder_qk(lm: torch.nn.Module, embeds: torch.Tensor, position_ids: torch.Tensor,
               query_positions: torch.Tensor, key_len: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Layer-0 queries and keys of a Llama-style decoder stack `lm` (`.layers[0].input_layernorm`,
    `.layers[0].self_attn.{q,k}_proj` and optional `{q,k}_norm`, `.rotary_emb`): see `Adapter.layer0_qk`."""
    layer, attn = lm.layers[0], lm.layers[0].self_attn
    _refuse_unreproduced(attn, key_len)
    h = embeds[:, :key_len]
    x = layer.input_layernorm(h)  # (1, K, D)
    # an fp32 input makes transformers' rotary return fp32 cos/sin (it casts them to the input's dtype)
    cos, sin = lm.rotary_emb(h.float(), position_ids[..., :key_len])  # (1, K, d), M-RoPE already interleaved
    cos, sin = cos[0], sin[0]
    n_heads = attn.config.num_attention_heads
    head_dim = getattr(attn, "head_dim", attn.config.hidden_size // n_heads)
    q = attn.q_proj(x[0, query_positions]).view(-1, n_heads, head_dim)  # (N_q, H, d)
    k = attn.k_proj(x[0]).view(key_len, -1, head_dim)  # (K, H_kv, d)
    if getattr(attn, "q_norm", None) is not None:  # Qwen3-style per-head RMS norms, before rotary
        q = attn.q_norm(q)
    if getattr(attn, "k_norm", None) is not None:
        k = attn.k_norm(k)
    q, k = q.float().transpose(0, 1), k.float().transpose(0, 1)  # (H, N_q, d), (H_kv, K, d)
    q = q * cos[query_positions] + _rotate_half(q) * sin[query_positions]
    k = k * cos + _rotate_half(k) * sin
    k = k.repeat_interleave(n_heads // k.shape[0], dim=0)  # head h reads kv head h // n_rep (repeat_kv)
    scale = float(getattr(attn, "scaling", head_dim ** -0.5))
    return q, k, scale


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
