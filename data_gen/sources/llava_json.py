"""`llava_json`: LLaVA-style conversation files plus an image folder.

    [{"id": "000001", "image": "coco/train2017/000001.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat is on the table?"},
                        {"from": "gpt", "value": "A laptop."}, ...]}, ...]

Every (human, gpt) turn pair of a record that has images (`"image": "x.jpg"` or a list), or a video
(LLaVA-Video's `"video": "clips/x.mp4"`, or a list of frame paths with an optional `"fps"`; see
predictor.media.FrameSampling for sampling), is an item: one sample per answered assistant turn. With
`history` (default), a later turn of an image record is the whole conversation up to it (earlier questions
and answers, `Item.messages`), as the model saw it; so is any turn of a record with several images, whose
`<image>` tags place the images in the text (one tag per image; otherwise all images open the first turn).
The instruction is the turn's own text, tags removed. Video records' turns and `history=false` give each
turn alone with the record's image, as before. Records without an image or video (text-only) are left out.
A `.jsonl` file (one record per line) is read the same way. Item ids are `<record id>-<turn>`.
Image, frame and video paths are relative to `image_root` and must stay inside it unless `allow_outside_root`.
A record that cannot be read (a .jsonl line that is not JSON, bytes that are not UTF-8) becomes one
item that raises when drawn, so the loop skips it with its reason and the rest runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from data_gen.images import image_path
from data_gen.sources.base import SOURCES, Item, Source
from data_gen.sources.jsonl import parse_line, read_lines
from data_gen.sources.video import check_video, video_value
from predictor.media import FrameSampling

TAGS = ("<image>", "<video>")


class _Unreadable(str):
    """Why a record cannot be read (a str subclass: a record may itself be a JSON string)."""


def _read_records(path: str) -> list[object]:
    """A .json list or a .jsonl file -> its records; an unreadable record is an _Unreadable saying why."""
    if path.endswith(".jsonl"):
        out: list[object] = []
        for n, line in read_lines(path):
            try:
                out.append(parse_line(path, n, line))
            except ValueError as e:
                out.append(_Unreadable(e))
        return out
    raw = Path(path).read_bytes()
    try:
        try:
            data, bad_bytes = json.loads(raw.decode("utf-8-sig")), False
        except UnicodeDecodeError:  # keep the file: only the records holding the bad bytes are unusable
            data, bad_bytes = json.loads(raw.decode("utf-8", errors="surrogateescape")), True
    except json.JSONDecodeError as e:
        raise ValueError(f"llava_json: {path} is not valid JSON ({e}); fix it, or write one record per line "
                         f"to a .jsonl file, where a bad line skips only its own record") from e
    if not isinstance(data, list):
        raise ValueError(f"llava_json: {path} must hold a JSON list of records, found {type(data).__name__}")
    if bad_bytes:
        data = [_Unreadable(f"{path}: record {r} holds bytes that are not UTF-8; re-encode the file as UTF-8")
                if _has_surrogates(rec) else rec for r, rec in enumerate(data)]
    return data


def _has_surrogates(rec: object) -> bool:
    """Whether a record decoded with surrogateescape held bytes that are not UTF-8."""
    try:
        json.dumps(rec, ensure_ascii=False).encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


@SOURCES.register("llava_json")
class LlavaJsonSource(Source):
    def __init__(self, path: str | list[str], image_root: str | None = None, allow_outside_root: bool = False,
                 num_frames: int | None = 8, fps: float | None = None, default_fps: float = 1.0,
                 history: bool = True):
        paths = [path] if isinstance(path, str) else list(path)
        self.items: list[tuple[Item, str] | _Unreadable] = []  # (item with the raw image/video, its root)
        self.allow_outside_root = bool(allow_outside_root)
        self.sampling = FrameSampling(num_frames, fps, default_fps)
        seen: set[str] = set()
        for p in paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"llava_json source: no file {p!r}; set source.path=<conversations.json> "
                                        f"and source.image_root=<image folder>")
            root = image_root if image_root is not None else os.path.dirname(os.path.abspath(p))
            stem = os.path.splitext(os.path.basename(p))[0]
            for r, rec in enumerate(_read_records(p)):
                if not isinstance(rec, dict):
                    self.items.append(rec if isinstance(rec, _Unreadable) else
                                      _Unreadable(f"{p}: record {r} is not a JSON object"))
                    continue
                image, video = rec.get("image"), rec.get("video")
                images = [str(x) for x in image] if isinstance(image, list) else [str(image)] if image else []
                image = images[0] if images else None
                if not image and not video:
                    continue
                if not image:
                    try:
                        check_video(video, rec.get("fps"), f"{p}: record {r}")
                    except ValueError as e:
                        self.items.append(_Unreadable(e))
                        continue
                rec_id = str(rec.get("id", f"{stem}-{r}"))
                if rec_id in seen:  # LLaVA files repeat some ids: keep the ids unique and stable
                    rec_id = f"{rec_id}-r{r}"
                seen.add(rec_id)
                turns = rec.get("conversations", [])
                for t in range(0, len(turns) - 1, 2):
                    human, gpt = turns[t], turns[t + 1]
                    if human.get("from") != "human" or gpt.get("from") != "gpt":
                        continue
                    instruction = str(human.get("value", ""))
                    for tag in TAGS:
                        instruction = instruction.replace(tag, "")
                    item = Item(id=f"{rec_id}-{t // 2}", instruction=instruction.strip(),
                                answer=str(gpt.get("value", "")).strip())
                    if image:
                        item.image = image
                        if len(images) > 1 or (history and t > 0):
                            item.messages = _chat(turns[:t + 1], images)
                    else:  # fps: the record's until __getitem__ samples the frames
                        item.video, item.modality, item.fps = video, "video", rec.get("fps")
                    self.items.append((item, root))

    def __len__(self) -> int:
        return len(self.items)

    def item_id(self, i: int) -> str:
        entry = self.items[i]
        if isinstance(entry, _Unreadable):
            raise ValueError(str(entry))
        return entry[0].id

    def __getitem__(self, i: int) -> Item:
        entry = self.items[i]
        if isinstance(entry, _Unreadable):
            raise ValueError(str(entry))
        item, root = entry  # the path is checked here, not at listing: 665k realpath calls would slow startup
        if item.modality == "video":
            video, fps = video_value(item.video, root, self.allow_outside_root, self.sampling, item.fps, item.id)
            return dataclasses.replace(item, video=video, fps=fps)
        image = image_path(str(item.image), root, self.allow_outside_root)
        messages = item.messages
        if messages is not None:
            messages = [{**m, "content": [{**p, "image": image_path(p["image"], root, self.allow_outside_root)}
                                          if p["type"] == "image" else p for p in m["content"]]}
                        if isinstance(m["content"], list) else m for m in messages]
        return dataclasses.replace(item, image=image, messages=messages)


def _chat(turns: list[dict], images: list[str]) -> list[dict]:
    """LLaVA turns (human, gpt, ..., human) -> messages; the images at the `<image>` tags when there is one
    per image, else all of them at the start of the first human turn."""
    tagged = sum(str(t.get("value", "")).count("<image>") for t in turns if t.get("from") == "human")
    at_tags = tagged == len(images)
    pending = list(images)
    messages = []
    for n, turn in enumerate(turns):
        text = str(turn.get("value", ""))
        if turn.get("from") != "human":
            messages.append({"role": "assistant", "content": text.strip()})
            continue
        parts: list[dict] = []
        if not at_tags and n == 0:
            parts += [{"type": "image", "image": p} for p in pending]
        pieces = text.replace("<video>", "").split("<image>")
        for j, piece in enumerate(pieces):
            if piece.strip():
                parts.append({"type": "text", "text": piece.strip()})
            if at_tags and j < len(pieces) - 1:
                parts.append({"type": "image", "image": pending.pop(0)})
        messages.append({"role": "user", "content": parts})
    return messages
