"""The prompt as a chat: a list of messages, each with a role and content parts in any order.

    messages = [
        {"role": "user", "content": [{"type": "image", "image": img_a}, {"type": "image", "image": img_b},
                                     {"type": "text", "text": "Which image has the red circle?"}]},
        {"role": "assistant", "content": "The first."},
        {"role": "user", "content": [{"type": "text", "text": "What shape is next to it?"}]},
    ]
    prepared = adapter.prepare_messages(messages)            # instruction: the last user turn's text
    prepared = adapter.prepare_messages(messages, instruction="all")  # every user turn's text

Roles: "system", "user", "assistant"; content: a string (text) or a list of parts
{"type": "text", "text": str}, {"type": "image", "image": PIL image} or
{"type": "video", "video": frames, "fps": float (optional)}, as the families' chat templates take them.
The last message is the user turn being answered. `adapter.prepare(image, instruction)` is the short
form of one user turn [image, instruction] and gives the same `Prepared`.

This module is family-independent (no transformers): `Chat.parse` checks the messages and splits them
into what the chat template renders (parts without pixels), the media in prompt order, and the text
parts in prompt order with whether each belongs to the instruction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "image", "video")
INSTRUCTION_MODES = ("last", "all")


@dataclass
class MediaItem:
    kind: str  # "image" | "video"
    data: Any  # PIL image, or the video's frames
    fps: float | None = None


@dataclass
class Chat:
    template: list[dict]  # messages for the chat template: media parts carry no pixels
    media: list[MediaItem]  # in prompt order
    texts: list[tuple[str, bool]]  # every text part in prompt order, (text, part of the instruction)
    instruction: str  # the instruction's text parts joined by newlines (shard meta.instruction)

    @classmethod
    def parse(cls, messages: Any, system_prompt: str | None = None, instruction: str = "last") -> "Chat":
        if instruction not in INSTRUCTION_MODES:
            raise ValueError(f"instruction={instruction!r}: expected one of {INSTRUCTION_MODES} (the last user turn's "
                             f"text, or every user turn's)")
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got "
                             f"{type(messages).__name__}")
        template, media, texts, user_turns = [], [], [], []
        if system_prompt is not None and not (isinstance(messages[0], dict) and messages[0].get("role") == "system"):
            template.append({"role": "system", "content": system_prompt})
            texts.append((system_prompt, False))
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or msg.get("role") not in ROLES or "content" not in msg:
                raise ValueError(f"messages[{i}] = {str(msg)[:120]}: expected {{'role': one of {ROLES}, "
                                 f"'content': str or list of parts}}")
            role, content = msg["role"], msg["content"]
            first_text = len(texts)
            if isinstance(content, str):
                template.append({"role": role, "content": content})
                texts.append((content, False))
            elif isinstance(content, (list, tuple)) and content:
                parts = []
                for j, part in enumerate(content):
                    parts.append(_part(part, f"messages[{i}].content[{j}]", role, media, texts))
                template.append({"role": role, "content": parts})
            else:
                raise ValueError(f"messages[{i}].content: expected a string or a non-empty list of parts, got "
                                 f"{str(content)[:120]}")
            if role == "user":
                user_turns.append(list(range(first_text, len(texts))))
        if messages[-1]["role"] != "user":
            raise ValueError(f"the last message is {messages[-1]['role']!r}: end the messages with the user turn being "
                             f"answered (drop the trailing assistant turn; its text is the answer, not the prompt)")
        if not any(texts[t][0].strip() for t in user_turns[-1]):
            raise ValueError("the last user turn has no text: the instruction is the question being answered; add a "
                             "{'type': 'text', 'text': ...} part to it")
        chosen = user_turns[-1] if instruction == "last" else [t for turn in user_turns for t in turn]
        chosen = [t for t in chosen if texts[t][0].strip()]
        for t in chosen:
            texts[t] = (texts[t][0], True)
        return cls(template=template, media=media, texts=texts,
                   instruction="\n".join(texts[t][0] for t in chosen))


def _part(part: Any, where: str, role: str, media: list[MediaItem], texts: list) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind not in PART_TYPES:
        raise ValueError(f"{where} = {str(part)[:120]}: expected a dict with 'type' one of {PART_TYPES}")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise ValueError(f"{where}: a text part needs 'text': str, got {str(part)[:120]}")
        texts.append((part["text"], False))
        return {"type": "text", "text": part["text"]}
    if role == "system":
        raise ValueError(f"{where}: a {kind} in the system message; put images and videos in user turns")
    if part.get(kind) is None:
        raise ValueError(f"{where}: a {kind} part needs the {kind} itself under {kind!r} "
                         f"({'a PIL image' if kind == 'image' else 'its decoded frames'})")
    if kind == "image" and part.get("fps") is not None:
        raise ValueError(f"{where}: fps was given with an image; fps describes video frames")
    media.append(MediaItem(kind, part[kind], part.get("fps")))
    return {"type": kind}


def instruction_spans(text: str, texts: list[tuple[str, bool]], who: str) -> list[tuple[int, int]]:
    """Character spans in the templated prompt `text` of the instruction's text parts.

    texts: every text part of the chat in prompt order, (text, is_instruction). They are found from the end of
    the prompt backwards, each before the next, so a phrase that also occurs in the system prompt or an earlier
    turn is taken where its turn has it. who: the adapter and model, for the error. Raises where a part is not in
    the prompt verbatim: a -1 start would make the system prompt's first tokens the "instruction" features."""
    spans, cursor = [], len(text)
    for part, is_instruction in reversed(texts):
        start = text.rfind(part, 0, cursor)
        if start < 0:
            raise ValueError(
                f"{who}: the templated prompt does not contain the instruction {part!r} verbatim (the template "
                f"rewrote it, e.g. trimmed or escaped it), so its tokens cannot be found; prompt: {text[:300]!r}. "
                f"Pass the instruction as the template writes it (e.g. stripped), or fix the template or the "
                f"adapter's _messages")
        cursor = start
        if is_instruction:
            spans.append((start, start + len(part)))
    return spans
