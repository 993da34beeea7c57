"""`relevance_pruned`: lmms-eval's generation requests answered by `predictor.runtime.pruned_generate`.

    --model_args model=<adapter>,model_path=<dir>,predictor=<export>,keep=0.25     (or budget=<tokens>)
                 [,method=predictor|attention|random|cluster][,min_per_segment=0][,batch_size=8][,device=cuda]
                 [,dtype=bfloat16][,max_new_tokens=32][,max_pixels=802816][,max_video_pixels=1605632]
                 [,num_frames=8][,seed=0]

A document has any number of images and video files (a video is decoded into `num_frames` frames spread
evenly, with torchcodec: the `[video]` extra). Where the context has one `<image>` tag per visual, text and
visuals interleave there; otherwise the visuals come first, then the text. The budget counts all visual
tokens of a prompt (min_per_segment: at least that many per visual). Media are capped as data_gen and
eval.py cap them (`predictor.media.cap_pixels`), so the predictor prunes at the token count its labels were
made at, and keep=1.0 answers exactly as eval.py's unpruned row does. Generation is greedy (the task's
`max_new_tokens` and `until` apply; sampling settings do not).

Task types: generate_until; generate_until_multi_round (a real conversation: each round's question is a
new user turn after the model's earlier answers, pruned again for that question); loglikelihood (the
context is pruned once, then every continuation of it is scored on the pruned prompt, in batches).
One process: lmms-eval's data parallelism (accelerate launch) is not wired in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from predictor.media import DEFAULT_MAX_PIXELS, FrameSampling, VideoFile, cap_pixels, load_image, load_video

SERVED_METHODS = ("predictor", "attention", "random", "cluster")  # token selectors of predictor.runtime
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
MAX_ROUNDS = 32  # a multi-round document whose doc_to_text never ends the conversation is refused after this


class RelevancePruned(lmms):
    is_simple = True  # lmms-eval hands over the task's text and visuals; the adapter applies the chat template

    def __init__(self, model: str, model_path: str, predictor: str | None = None, method: str = "predictor",
                 keep: float | None = None, budget: int | None = None, batch_size: int | str = 1,
                 device: str | None = None, dtype: str = "auto", max_new_tokens: int = 32,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, max_video_pixels: int | None = 2 * DEFAULT_MAX_PIXELS,
                 num_frames: int = 8, seed: int = 0, allow_modality_mismatch: bool = False,
                 max_batch_size: int | None = None, min_per_segment: int = 0):
        """model: an adapter name (predictor.adapters), model_path: its checkpoint folder, predictor: an export
        (needed by method=predictor), keep: a ratio in (0, 1] or budget: visual tokens per prompt.
        max_batch_size: lmms-eval's automatic batch sizing, not used (batch_size is fixed)."""
        super().__init__()
        import torch

        from predictor import load_predictor
        from predictor.adapters import load_adapter
        from predictor.runtime import budget_for, make_method

        if method not in SERVED_METHODS:
            raise ValueError(f"method={method!r} is not served by relevance_pruned; expected one of "
                             f"{', '.join(SERVED_METHODS)} (oracle and downsample run in python eval.py)")
        budget_for(1, keep, budget)  # the keep/budget checks, before any model loads
        if method == "predictor" and predictor is None:
            raise ValueError("method=predictor needs predictor=<export folder> in --model_args "
                             "(python train.py writes one; checkpoints/predictor-reference is the reference's)")
        if str(batch_size).startswith("auto"):
            raise ValueError(f"batch_size={batch_size}: relevance_pruned takes a fixed batch size, e.g. --batch_size 8")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.adapter = load_adapter(model, str(model_path), dtype=dtype, device=device)
        export = load_predictor(str(predictor)).to(device) if predictor is not None else None
        self.method = make_method(method, predictor=export, seed=int(seed), max_new_tokens=int(max_new_tokens),
                                  allow_modality_mismatch=bool(allow_modality_mismatch))
        self.keep, self.budget, self.min_per_segment = keep, budget, int(min_per_segment)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.max_pixels, self.max_video_pixels, self.num_frames = max_pixels, max_video_pixels, int(num_frames)
        self.records: list[dict[str, Any]] = []  # per answered request: task, doc_id, num_visual, num_kept

    # ---- requests ---------------------------------------------------------------------------------

    def generate_until(self, requests) -> list[str]:
        """Requests with args (context, gen_kwargs, doc_to_visual, doc_id, task, split) -> answers, in order.
        Requests with the same `max_new_tokens` and `until` share batches of `batch_size`."""
        from predictor.runtime import pruned_generate

        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(_generation_key(req.args[1], self.max_new_tokens), []).append(i)
        answers: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="relevance_pruned", disable=self.rank != 0)
        for (max_new_tokens, until), idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                prepared = [self._prepare(requests[i].args) for i in chunk]
                outs = pruned_generate(self.adapter, prepared, self.method, keep=self.keep, budget=self.budget,
                                       max_new_tokens=max_new_tokens, min_per_segment=self.min_per_segment)
                for i, out in zip(chunk, outs):
                    context, gen_kwargs, _, doc_id, task, _ = requests[i].args
                    answers[i] = _cut(out.text, until)
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), answers[i])
                    self.records.append({"task": task, "doc_id": doc_id, "num_visual": out.num_visual,
                                         "num_kept": out.num_kept})
                bar.update(len(chunk))
        bar.close()
        return answers

    def loglikelihood(self, requests) -> list[Any]:
        """Requests with args (context, continuation or doc_to_target, doc_to_visual, doc_id, task, split) ->
        (loss, is greedy) each, in lmms-eval's convention: loss is the mean negative log-likelihood per
        continuation token, as its own models return it (multiple_choice picks the lowest). Requests on one
        document and context share one pruning.

        Each pair goes out wrapped in lmms-eval's GenerationResult: its evaluator (0.7.3,
        api/instance.py unwrap_generation_output) turns any other output that is not a string into str(output),
        which multiple_choice cannot unpack; the wrapper's `.text` is handed on as it is."""
        from lmms_eval.api.instance import GenerationResult

        from predictor.runtime import pruned_loglikelihood

        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            context, _, _, doc_id, task, split = req.args
            groups.setdefault((task, split, doc_id, context), []).append(i)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="relevance_pruned loglikelihood", disable=self.rank != 0)
        tok = self.adapter.tokenizer
        for (task, split, doc_id, context), idx in groups.items():
            doc = self.task_dict[task][split][doc_id]
            conts = []
            for i in idx:
                target = requests[i].args[1]
                text = target if isinstance(target, str) else target(doc)
                ids = tok(str(text), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
                if ids.numel() == 0:
                    raise ValueError(f"task {task!r} doc {doc_id}: continuation {text!r} has no tokens to score")
                conts.append(ids)
            prepared = self._prepare_chat([self._visuals(requests[idx[0]].args[2], doc)], [context], [], task, doc_id)
            scored = pruned_loglikelihood(self.adapter, prepared, conts, self.method, keep=self.keep,
                                          budget=self.budget, min_per_segment=self.min_per_segment,
                                          batch_size=self.batch_size)
            for i, c, (ll, greedy) in zip(idx, conts, scored):
                results[i] = GenerationResult(text=(-ll / c.numel(), greedy))
                self.cache_hook.add_partial("loglikelihood", requests[i].args[:2], (-ll / c.numel(), greedy))
            bar.update(len(idx))
        bar.close()
        return results

    def generate_until_multi_round(self, requests) -> list[list[str]]:
        """Requests with args (context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split) -> the
        answers of every round. Round 0 asks `context` about the document's visuals; each later round's
        question comes from doc_to_text(doc, previous_output=, round_idx=, previous_round_info=), which also
        ends the conversation (lmms-eval's protocol), and is asked as a new user turn after the model's
        earlier answers (new visuals it returns join that turn). Each round prunes for its own question.
        Returns each document's answers as a list of strings, the form lmms-eval hands on per round."""
        from predictor.runtime import pruned_generate

        out: list[list[str]] = []
        bar = tqdm(total=len(requests), desc="relevance_pruned multi-round", disable=self.rank != 0)
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = req.args
            max_new_tokens, until = _generation_key(gen_kwargs, self.max_new_tokens)
            doc = self.task_dict[task][split][doc_id]
            visuals = self._visuals(doc_to_visual, doc)
            turns, answers, round_visuals, info = [context], [], [visuals], None
            for round_idx in range(1, 1 + MAX_ROUNDS):
                prepared = self._prepare_chat(round_visuals, turns, answers, task, doc_id)
                o = pruned_generate(self.adapter, prepared, self.method, keep=self.keep, budget=self.budget,
                                    max_new_tokens=max_new_tokens, min_per_segment=self.min_per_segment)[0]
                answers.append(_cut(o.text, until))
                self.records.append({"task": task, "doc_id": doc_id, "round": round_idx - 1,
                                     "num_visual": o.num_visual, "num_kept": o.num_kept})
                new_visuals, text, terminal, _, info = doc_to_text(doc, previous_output=list(answers),
                                                                   round_idx=round_idx, previous_round_info=info)
                if terminal:
                    break
                seen = {id(v) for vs in round_visuals for v in vs}
                round_visuals.append([v for v in _flat(new_visuals) if id(v) not in seen])
                turns.append(text)
            else:
                raise ValueError(f"task {task!r} doc {doc_id}: no terminal signal after {MAX_ROUNDS} rounds")
            out.append(list(answers))
            self.cache_hook.add_partial("generate_until_multi_round", (context, gen_kwargs), list(answers))
            bar.update(1)
        bar.close()
        return out

    # ---- media ------------------------------------------------------------------------------------

    def _prepare(self, args):
        """One generate_until request -> the adapter's Prepared prompt."""
        context, _, doc_to_visual, doc_id, task, split = args
        return self._prepare_chat([self._visuals(doc_to_visual, self.task_dict[task][split][doc_id])], [context], [],
                                  task, doc_id)

    @staticmethod
    def _visuals(doc_to_visual, doc) -> list:
        return _flat(doc_to_visual(doc)) if doc_to_visual is not None else []

    def _prepare_chat(self, round_visuals, turns: list[str], answers: list[str], task, doc_id):
        """A chat of user turns (turns[r] with the visuals round_visuals[r]) and the model's answers between
        them. A single image or video with one question prepares as the adapter's short form does (eval.py's).
        """
        if sum(len(v) for v in round_visuals) == 0:
            raise ValueError(f"task {task!r} doc {doc_id}: no visuals; relevance_pruned prunes visual tokens, so every "
                             f"document needs at least one image or video")
        messages = []
        for r, text in enumerate(turns):
            parts = self._interleave(round_visuals[r] if r < len(round_visuals) else [], text)
            messages.append({"role": "user", "content": parts})
            if r < len(answers):
                messages.append({"role": "assistant", "content": answers[r] or " "})
        return self.adapter.prepare_messages(messages)

    def _interleave(self, visuals: list, context: str) -> list[dict]:
        """Message parts: text and visuals at the context's `<image>` tags when there is one per visual, else
        the visuals first and the text (tags removed) after them."""
        media = [self._media_part(v) for v in visuals]
        pieces = context.split("<image>")
        if len(pieces) - 1 == len(media) and media:
            parts = []
            for j, piece in enumerate(pieces):
                if piece.strip():
                    parts.append({"type": "text", "text": piece.strip()})
                if j < len(media):
                    parts.append(media[j])
            return parts
        text = context.replace("<image>", "").strip()
        return media + ([{"type": "text", "text": text}] if text else [])

    def _media_part(self, visual) -> dict:
        if isinstance(visual, (str, Path)) and str(visual).lower().endswith(VIDEO_SUFFIXES):
            frames, fps = load_video(VideoFile(str(visual), FrameSampling(self.num_frames)), None, self.max_pixels,
                                     self.max_video_pixels)
            return {"type": "video", "video": frames, "fps": fps}
        return {"type": "image", "image": cap_pixels(load_image(visual), self.max_pixels)}


def _generation_key(gen_kwargs: dict, default_max_new_tokens: int) -> tuple[int, tuple[str, ...]]:
    until = gen_kwargs.get("until") or ()
    until = (until,) if isinstance(until, str) else tuple(until)
    return int(gen_kwargs.get("max_new_tokens", default_max_new_tokens)), until


def _cut(text: str, until: tuple[str, ...]) -> str:
    """The answer up to its first stop string (lmms-eval's `until`)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def _flat(visuals) -> list:
    """lmms-eval's doc_to_visual result ([img], [[img]], img, [video path]) -> a flat list."""
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        return [visuals]
    return [v for x in visuals for v in (_flat(x) if isinstance(x, (list, tuple)) else [x])]
