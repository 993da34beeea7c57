"""Chat prompts made of scenes: two images with one question, and a two-turn conversation about one image.

The same prompts for the reference MLLM's training (`reference_mllm.train`, `prompt_mix`) and for the
`synthetic_scenes` source's `two_images` and `multi_turn` modes (data_gen), so that the chat model is trained on
exactly the prompt form it is measured on. Messages are in the form the adapters take
(`predictor.adapters.messages`): image parts hold the PIL image, the chat template renders the history.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from reference_mllm import scenes

KINDS = ("single", "two_images", "multi_turn")
MAX_PARTNER_SEARCH = 1000  # scenes tried for a two-image partner without the target's naming word


@dataclass
class ChatPrompt:
    """One chat prompt and what its answer depends on.

    messages: the chat (image parts with their PIL image); images: the images in prompt order;
    drawn: the scene of each image; question: the answered (last) question, about scene `drawn[target_image]`;
    previous: the earlier turn's question (multi_turn) or None; partner: the other scene's index (two_images).
    """

    messages: list[dict]
    images: list[Any]
    drawn: list[scenes.Scene]
    question: scenes.Question
    target_image: int = 0
    previous: scenes.Question | None = None
    partner: int | None = None

    def relevance(self) -> np.ndarray:
        """(sum of the images' tokens,) ground truth of the answered question's object, zeros on other images."""
        return np.concatenate([scenes.object_relevance(s, self.question.target) if k == self.target_image
                               else np.zeros(s.grid[1] * s.grid[2], dtype=np.float32)
                               for k, s in enumerate(self.drawn)])


def partner_index(stream, i: int) -> int:
    """The first scene after i (wrapping) in `stream` (a `streams.SceneStream`) with no object that has the word
    naming scene i's target, so that the question has one answer across both images."""
    s = stream.scene(i)
    q = s.questions[0]
    attr = "colour" if q.kind == "shape" else "shape"  # what names the target
    named = getattr(s.objects[q.target], attr)
    for j in range(i + 1, i + 1 + MAX_PARTNER_SEARCH):
        if all(getattr(o, attr) != named for o in stream.scene(j % max(len(stream), 1)).objects):
            return j % max(len(stream), 1)
    raise ValueError(f"no scene among the {MAX_PARTNER_SEARCH} after {i} lacks a {named} object; "
                     f"draw fewer objects (source.num_objects)")


def two_images(stream, i: int) -> ChatPrompt:
    """Scene i and its partner (`partner_index`), the named object in the first image for even i and the
    second for odd i, and scene i's question after both images."""
    s = stream.scene(i)
    j = partner_index(stream, i)
    other = stream.scene(j)
    first = i % 2 == 0
    pair = [s, other] if first else [other, s]
    messages = [{"role": "user", "content": [{"type": "image", "image": pair[0].image},
                                             {"type": "image", "image": pair[1].image},
                                             {"type": "text", "text": s.questions[0].text}]}]
    return ChatPrompt(messages, [p.image for p in pair], pair, s.questions[0], 0 if first else 1, partner=j)


def multi_turn(scene: scenes.Scene) -> ChatPrompt:
    """The scene's two questions as a conversation: the first with its answer, then the second (answered)."""
    if len(scene.questions) < 2:
        raise ValueError(f"a scene of {len(scene.objects)} object(s) has one question: a conversation needs two "
                         f"(draw more objects, source.num_objects)")
    q0, q1 = scene.questions[:2]
    messages = [{"role": "user", "content": [{"type": "image", "image": scene.image}, {"type": "text", "text": q0.text}]},
                {"role": "assistant", "content": q0.answer},
                {"role": "user", "content": [{"type": "text", "text": q1.text}]}]
    return ChatPrompt(messages, [scene.image], [scene], q1, previous=q0)


def single(scene: scenes.Scene) -> ChatPrompt:
    """The scene's first question about its image, as a one-turn chat."""
    q = scene.questions[0]
    messages = [{"role": "user", "content": [{"type": "image", "image": scene.image}, {"type": "text", "text": q.text}]}]
    return ChatPrompt(messages, [scene.image], [scene], q)


def draw(stream, i: int, kind: str) -> ChatPrompt:
    """Prompt `kind` (one of KINDS) made from item i of `stream`."""
    if kind == "two_images":
        return two_images(stream, i)
    if kind == "multi_turn":
        return multi_turn(stream.scene(i))
    if kind == "single":
        return single(stream.scene(i))
    raise ValueError(f"prompt kind {kind!r}: expected one of {', '.join(KINDS)}")


def template_messages(messages: list[dict]) -> list[dict]:
    """The messages as a chat template takes them: image parts without their pixels."""
    out = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str):
            content = [{"type": "image"} if p.get("type") == "image" else p for p in content]
        out.append({**m, "content": content})
    return out
