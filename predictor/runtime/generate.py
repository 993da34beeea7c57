"""The pruned-generation entry point: score, keep, remove, generate.

    outs = pruned_generate(adapter, [prepared, ...], method, keep=0.25)

For each prompt: embed it (vision tower + merge, through the adapter), let `method` choose the
visual tokens to keep (see `scorers.py`, `baselines.py`), remove the others from the embeddings
and position ids (`prune.py`), batch the shortened prompts with left padding, and generate with
the model's own attention implementation (SDPA / FlashAttention as loaded; never forced to eager).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from predictor.runtime.prune import PrunedPrompt, deepstack_batch, left_pad, prune_prompt
from predictor.runtime.scorers import ScoreContext, Selection
from predictor.targets import num_kept


@dataclass
class PrunedOutput:
    answer_ids: torch.Tensor  # (T,) without EOS
    text: str
    kept_visual: torch.Tensor  # (N_v,) bool
    num_visual: int
    num_kept: int
    seq_len: int  # prompt tokens the LLM saw
    scores: torch.Tensor | None = None  # (N_v,) what the method ranked by, if it ranks


@torch.no_grad()
def make_context(adapter, prepared, answer_ids: torch.Tensor | None = None) -> ScoreContext:
    """Embed one prompt once; every method then reads from the same embeddings and positions."""
    embeds = adapter.embed(prepared)
    return ScoreContext(adapter=adapter, prepared=prepared, embeds=embeds, deepstack=adapter.deepstack(prepared),
                        position_ids=adapter.position_ids(prepared), answer_ids=answer_ids)


def budget_for(num_visual: int, keep: float | None, budget: int | None) -> int:
    """Visual tokens to keep: `budget` if given (capped at N_v), else ceil(keep * N_v) (at least 1, exact:
    `predictor.targets.num_kept`). Methods select by this count; no ratio is passed further down."""
    if (keep is None) == (budget is None):
        raise ValueError(f"give exactly one of keep= (a ratio in (0, 1]) or budget= (a token count); "
                         f"got keep={keep}, budget={budget}")
    if budget is not None:
        if budget != int(budget):
            raise ValueError(f"budget={budget}: expected a whole number of visual tokens; round it")
        if budget < 1:
            raise ValueError(f"budget must be >= 1 visual token, got {budget}")
        return min(int(budget), num_visual)
    if not 0 < keep <= 1:
        raise ValueError(f"keep ratio must be in (0, 1], got {keep}")
    return num_kept(num_visual, keep)


@torch.no_grad()
def prune_context(ctx: ScoreContext, method, keep: float | None = None, budget: int | None = None,
                  min_per_segment: int = 0) -> tuple[PrunedPrompt, Selection]:
    """Choose and physically remove visual tokens of one prompt. The budget (keep or budget) counts all
    the prompt's visual tokens, whichever image they belong to; min_per_segment: keep at least that many
    of each image or video (capped at its size)."""
    n_v = ctx.prepared.num_visual
    k = budget_for(n_v, keep, budget)
    if k >= n_v:  # nothing to drop: every method (clustering too) leaves the prompt as it is
        sel = Selection(kept=torch.ones(n_v, dtype=torch.bool, device=ctx.embeds.device))
    elif min_per_segment:
        sel = method.select(ctx, k, min_per_segment=min_per_segment)
    else:
        sel = method.select(ctx, k)
    pp = prune_prompt(ctx.embeds, ctx.position_ids, ctx.prepared.visual_positions, sel.kept, sel.replace,
                      ctx.deepstack, sel.replace_deepstack)
    return pp, sel


@torch.no_grad()
def pruned_generate(adapter, prepared, method, keep: float | None = None, budget: int | None = None,
                    max_new_tokens: int = 32, contexts: list[ScoreContext] | None = None,
                    min_per_segment: int = 0) -> list[PrunedOutput]:
    """Prune each prompt with `method` and generate greedily, all prompts in one left-padded batch.

    prepared: one `Prepared` or a list (token counts may differ; chats of several images too, see
    `Adapter.prepare_messages`); contexts: precomputed `make_context` results to reuse (evaluation scores
    many methods on one embedding); min_per_segment: see `prune_context`.
    """
    prepared = [prepared] if not isinstance(prepared, (list, tuple)) else list(prepared)
    contexts = contexts or [make_context(adapter, p) for p in prepared]
    pruned, sels = zip(*(prune_context(c, method, keep, budget, min_per_segment) for c in contexts))
    embeds, mask, pos = left_pad(list(pruned))
    answers = adapter.generate_from_embeds(embeds, mask, pos, max_new_tokens=max_new_tokens,
                                           deepstack=deepstack_batch(list(pruned)))
    return [PrunedOutput(answer_ids=a.cpu(), text=adapter.decode_answer(a), kept_visual=s.kept.cpu(),
                         num_visual=int(s.kept.numel()), num_kept=int(s.kept.sum()), seq_len=pp.seq_len,
                         scores=None if s.scores is None else s.scores.cpu())
            for a, s, pp in zip(answers, sels, pruned)]


@torch.no_grad()
def prefill(adapter, pruned: PrunedPrompt, repeats: int = 1, batch: int = 1) -> tuple[float, int]:
    """Time one prompt's prefill (LLM forward over the prompt embeddings, producing the first token's
    logits and the KV cache), `batch` copies of it at once; returns (best seconds of `repeats`, KV-cache
    bytes after prefill). The vision tower is not included: it runs the same for every method."""
    embeds, mask, pos = left_pad([pruned] * batch)
    deepstack = deepstack_batch([pruned] * batch)
    best, kv = float("inf"), 0
    for _ in range(repeats):
        if embeds.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with adapter.deepstack_inputs(deepstack):
            out = adapter.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True,
                                logits_to_keep=1)
        if embeds.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        kv = cache_bytes(out.past_key_values)
    return best, kv


def cache_bytes(cache) -> int:
    """Bytes held by a transformers KV cache (keys + values of every layer)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def pruned_loglikelihood(adapter, prepared, continuations: list[torch.Tensor], method, keep: float | None = None,
                         budget: int | None = None, min_per_segment: int = 0, batch_size: int = 8,
                         context: ScoreContext | None = None) -> list[tuple[float, bool]]:
    """Score continuations of one prompt on its pruned form: prune once (the method sees the prompt, never
    a continuation), then one teacher-forced forward per batch of continuations, each appended to the
    shortened prompt at the positions generation would give it (after the last prompt position).

    continuations: (T_i,) token id tensors (T_i >= 1). Returns per continuation (sum of log p(token), whether
    every token is the greedy choice), as lmms-eval's `loglikelihood` expects.
    """
    if not continuations or any(c.numel() == 0 for c in continuations):
        raise ValueError("every continuation needs at least one token (an empty answer has no likelihood to score)")
    ctx = context or make_context(adapter, prepared)
    pruned, _ = prune_context(ctx, method, keep, budget, min_per_segment)
    pos = pruned.position_ids
    nxt = int(pos[..., -1].max()) + 1  # text after the prompt: every axis at the last position + 1
    results: list[tuple[float, bool]] = []
    for start in range(0, len(continuations), batch_size):
        chunk = [c.reshape(-1).long() for c in continuations[start:start + batch_size]]
        rows = []
        for ids in chunk:
            emb = adapter.embed(prepared, ids)[0, prepared.seq_len:].to(pruned.embeds.dtype)  # (T, D)
            extra = torch.arange(nxt, nxt + ids.numel(), device=pos.device)
            extra = extra.expand(3, -1) if pos.ndim == 2 else extra
            rows.append(PrunedPrompt(
                embeds=torch.cat([pruned.embeds, emb.to(pruned.embeds.device)]),
                position_ids=torch.cat([pos, extra], dim=-1), kept_visual=pruned.kept_visual,
                visual_slots=torch.cat([pruned.visual_slots, pruned.visual_slots.new_zeros(ids.numel())]),
                deepstack=pruned.deepstack))
        embeds, mask, position_ids = left_pad(rows)
        with adapter.deepstack_inputs(deepstack_batch(rows)):
            logits = adapter.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                                   use_cache=False).logits
        S = embeds.shape[1]
        for b, ids in enumerate(chunk):
            t = ids.numel()
            logp = torch.log_softmax(logits[b, S - t - 1:S - 1].float(), dim=-1)  # row i predicts token i
            ids = ids.to(logp.device)
            results.append((float(logp.gather(-1, ids[:, None]).sum()), bool((logp.argmax(-1) == ids).all())))
    return results
