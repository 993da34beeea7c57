"""`relevance_pruned`: lmms-eval's generation requests answered by `predictor.runtime.pruned_generate`.

    --model_args model=<adapter>,model_path=<dir>,predictor=<export>,keep=0.25     (or budget=<tokens>)
                 [,method=predictor|attention|random|cluster][,batch_size=8][,device=cuda][,dtype=bfloat16]
                 [,max_new_tokens=32][,max_pixels=802816][,max_video_pixels=1605632][,num_frames=8][,seed=0]

Each document is one image or one video file (decoded into `num_frames` frames spread evenly, with torchcodec:
the `[video]` extra). Media are capped as data_gen and eval.py cap them (`predictor.media.cap_pixels`), so the
predictor prunes at the token count its labels were made at, and keep=1.0 answers exactly as eval.py's
unpruned row does. Generation is greedy (the task's `max_new_tokens` and `until` apply; sampling settings
do not). One process: lmms-eval's data parallelism (accelerate launch) is not wired in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from predictor.media import DEFAULT_MAX_PIXELS, FrameSampling, VideoFile, cap_pixels, load_image, load_video

SERVED_METHODS = ("predictor", "attention", "random", "cluster")  # token selectors of predictor.runtime
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class RelevancePruned(lmms):
    is_simple = True  # lmms-eval hands over the task's text and visuals; the adapter applies the chat template

    def __init__(self, model: str, model_path: str, predictor: str | None = None, method: str = "predictor",
                 keep: float | None = None, budget: int | None = None, batch_size: int | str = 1,
                 device: str | None = None, dtype: str = "auto", max_new_tokens: int = 32,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, max_video_pixels: int | None = 2 * DEFAULT_MAX_PIXELS,
                 num_frames: int = 8, seed: int = 0, allow_modality_mismatch: bool = False,
                 max_batch_size: int | None = None):
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
        self.keep, self.budget = keep, budget
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
                                       max_new_tokens=max_new_tokens)
                for i, out in zip(chunk, outs):
                    context, gen_kwargs, _, doc_id, task, _ = requests[i].args
                    answers[i] = _cut(out.text, until)
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), answers[i])
                    self.records.append({"task": task, "doc_id": doc_id, "num_visual": out.num_visual,
                                         "num_kept": out.num_kept})
                bar.update(len(chunk))
        bar.close()
        return answers

    def loglikelihood(self, requests):
        raise NotImplementedError(
            "relevance_pruned answers generation tasks only (output_type: generate_until); this task scores "
            "loglikelihood. Use its generate_until variant, or lmms-eval's own model of the family unpruned")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("relevance_pruned answers single-turn generate_until tasks; this one is multi-round")

    # ---- media ------------------------------------------------------------------------------------

    def _prepare(self, args):
        """One request -> the adapter's Prepared prompt (context without lmms-eval's <image> tags)."""
        context, _, doc_to_visual, doc_id, task, split = args
        visuals = _flat(doc_to_visual(self.task_dict[task][split][doc_id]))
        if len(visuals) != 1:
            raise ValueError(f"task {task!r} doc {doc_id}: relevance_pruned takes one image or one video per "
                             f"document, found {len(visuals)} visuals; pick a single-image or video task")
        instruction = context.replace("<image>", "").strip()
        visual = visuals[0]
        if isinstance(visual, (str, Path)) and str(visual).lower().endswith(VIDEO_SUFFIXES):
            frames, fps = load_video(VideoFile(str(visual), FrameSampling(self.num_frames)), None, self.max_pixels,
                                     self.max_video_pixels)
            return self.adapter.prepare(None, instruction, video=frames, fps=fps)
        return self.adapter.prepare(cap_pixels(load_image(visual), self.max_pixels), instruction)


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
