"""Plain full-matrix GAE, the test oracle for `gae.py` (not registered; small models only).

Keeps every layer's (H, S, S) attention in the graph, one backward per answer token for all
layers' gradients, and forms the full S x S rollout R <- R + A_bar R, exactly as the rule is written.
"""
from __future__ import annotations

import contextlib

import torch

from data_gen.explainers._common import answer_scores, check_score, finish
from data_gen.explainers.linear_attention import gated_delta_inputs, implicit_attention, linear_attention_layers


def reference_gae(adapter, prepared, answer_ids: torch.Tensor, score: str = "logit",
                  gradient: bool = True, rule: str = "positive", linear_layers: str = "residual") -> torch.Tensor:
    """(N_v,) relevance; gradient=False gives the plain attention rollout (A_bar = head mean of A);
    rule "abs" keeps |grad x A| instead of its positive part; linear_layers "implicit" runs a hybrid decoder's
    linear-attention layers as core = A @ v with their implicit attention A in the graph, and rolls out
    through A as through a softmax layer's probabilities ("residual": they pass as I)."""
    check_score(score)
    answer_ids = answer_ids.reshape(-1)
    s, n_t = prepared.seq_len, answer_ids.numel()
    with torch.enable_grad():
        embeds = adapter.embed(prepared, answer_ids).detach().requires_grad_(True)  # weights are frozen
        implicit: dict[int, torch.Tensor] = {}
        with linear_as_matrix(adapter, implicit) if linear_layers == "implicit" else contextlib.nullcontext():
            out = adapter.teacher_forced(prepared, answer_ids, output_attentions=True, inputs_embeds=embeds)
        # L x (1, H, S+T, S+T); a hybrid decoder's linear layers (None) pass as I unless implicit
        atts = tuple(a if a is not None else implicit.get(i) for i, a in enumerate(out.attentions))
        atts = tuple(a for a in atts if a is not None)
        scores = answer_scores(out.logits[:, s - 1:s - 1 + n_t], answer_ids, score)[0]  # (T,)
        n = s + n_t
        visual = prepared.visual_positions.to(scores.device)
        rel = torch.zeros(visual.numel(), device=scores.device)
        for t in range(n_t):
            if gradient:
                grads = torch.autograd.grad(scores[t], atts, retain_graph=True)
                prods = [g[0] * a[0] for g, a in zip(grads, atts)]
                a_bars = [(p.clamp_min(0) if rule == "positive" else p.abs()).mean(0) for p in prods]
            else:
                a_bars = [a[0].detach().mean(0) for a in atts]
            r = torch.eye(n, device=scores.device)
            for a_bar in a_bars:  # first layer first
                r = r + a_bar @ r
            rel += r[s - 1 + t, visual]
    return finish(rel / n_t)


@contextlib.contextmanager
def linear_as_matrix(adapter, record: dict[int, torch.Tensor]):
    """Each linear-attention layer computes its core output as A @ v, A (1, H, S, S) recorded in the graph."""
    layers = linear_attention_layers(adapter)

    def forward_of(module, i):
        def forward(hidden_states, attention_mask=None, **kwargs):
            bsz, n, _ = hidden_states.shape
            q, k, v, z, g, beta = gated_delta_inputs(module, hidden_states, attention_mask)
            record[i] = a = implicit_attention(q, k, g, beta)
            core = torch.einsum("bhts,bshd->bthd", a, v.float()).to(v.dtype)
            core = module.norm(core.reshape(-1, module.head_v_dim), z.reshape(-1, module.head_v_dim))
            return module.out_proj(core.reshape(bsz, n, -1))
        return forward
    try:
        for i, module in layers.items():
            module.forward = forward_of(module, i)
        yield
    finally:
        for module in layers.values():
            module.__dict__.pop("forward", None)
