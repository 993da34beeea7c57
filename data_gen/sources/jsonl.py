"""`jsonl`: one JSON object per line with a local image path, an instruction, an answer, and an id.

    {"id": "q1", "image": "imgs/cat.jpg", "instruction": "What animal is this?", "answer": "cat"}
    {"id": "v1", "video": ["clip/0.jpg", "clip/1.jpg"], "fps": 2, "instruction": "...", "answer": "..."}
    {"id": "v2", "video": "clips/dog.mp4", "instruction": "What does the dog do?", "answer": "jumps"}

    {"id": "m1", "images": ["a.jpg", "b.jpg"], "instruction": "Which image has a dog?", "answer": "the second"}
    {"id": "c1", "messages": [{"role": "user", "content": [{"type": "image", "image": "a.jpg"},
                                                           {"type": "text", "text": "What is this?"}]},
                              {"role": "assistant", "content": "A dog."},
                              {"role": "user", "content": "What colour is it?"}], "answer": "brown"}

`images` (several images, then the instruction) and `messages` (a chat as `predictor.adapters.messages`
takes it, image parts holding paths, ending with the user turn `answer` answers; the instruction is that
turn's text) become `Item.messages`. Otherwise a line has an image or a video: a list of frame paths (`fps`, optional, is the rate they were
extracted at) or a video file (decoded in the loop; see predictor/media.py). Image and frame paths are relative to `image_root` (default: the folder of the jsonl file) and must stay
inside it unless `allow_outside_root`. Without an id field, the id is a hash of (image, instruction),
so the same line gets the same id in every run. Lines are decoded and parsed when read, so one
malformed line (bad JSON, bytes that are not UTF-8) is skipped by the loop with its reason and
line number.
"""
from __future__ import annotations

import hashlib
import json
import os

from data_gen.images import image_path
from data_gen.sources.base import SOURCES, Item, Source
from data_gen.sources.video import video_value
from predictor.media import FrameSampling


def content_id(*parts: str) -> str:
    """Stable short id from item content."""
    return hashlib.sha1("\n".join(parts).encode("utf-8")).hexdigest()[:16]


def read_lines(path: str) -> list[tuple[int, bytes]]:
    """The non-blank lines of a JSON-lines file as (line number, raw bytes). Bytes, not text: one
    undecodable byte must fail only its own line (see `parse_line`), not the whole file."""
    with open(path, "rb") as f:
        return [(n, line) for n, line in enumerate(f, 1) if line.strip()]


def parse_line(path: str, n: int, line: bytes) -> object:
    """One raw line -> its JSON value; ValueError naming the file and line number otherwise."""
    try:
        return json.loads(line.decode("utf-8-sig" if n == 1 else "utf-8"))  # a BOM may open the file
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: line {n} is not UTF-8 (byte {line[e.start:e.start + 1]!r} at column "
                         f"{e.start + 1}); re-encode the file as UTF-8 or fix that line") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {n} is not valid JSON ({e})") from e


@SOURCES.register("jsonl")
class JsonlSource(Source):
    def __init__(self, path: str, image_root: str | None = None, image_field: str = "image",
                 instruction_field: str = "instruction", answer_field: str = "answer", id_field: str = "id",
                 allow_outside_root: bool = False, video_field: str = "video", num_frames: int | None = 8,
                 fps: float | None = None, default_fps: float = 1.0):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"jsonl source: no file {path!r}; set source.path=<file.jsonl> "
                                    f"(one JSON object per line with image, instruction, answer)")
        self.path, self.allow_outside_root = path, bool(allow_outside_root)
        self.image_root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
        self.fields = (image_field, instruction_field, answer_field, id_field)
        self.video_field, self.sampling = video_field, FrameSampling(num_frames, fps, default_fps)
        self.lines = read_lines(path)

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, i: int) -> Item:
        image_f, instr_f, answer_f, id_f = self.fields
        n, line = self.lines[i]
        rec = parse_line(self.path, n, line)
        if not isinstance(rec, dict):
            raise ValueError(f"{self.path}: line {n} is not a JSON object")
        if "messages" in rec or "images" in rec:
            return self._chat_item(rec, n)
        video_f = self.video_field
        visual = [f for f in (image_f, video_f) if f in rec]
        missing = [f for f in (instr_f, answer_f) if f not in rec] + ([] if visual else [f"{image_f} or {video_f}"])
        if missing:
            raise ValueError(f"{self.path}: line {n} lacks {missing}; found keys {sorted(rec)} "
                             f"(set source.image_field/video_field/instruction_field/answer_field)")
        if len(visual) == 2:
            raise ValueError(f"{self.path}: line {n} has both {image_f!r} and {video_f!r}; give one of them")
        item_id = str(rec[id_f]) if rec.get(id_f) is not None else content_id(str(rec[visual[0]]), str(rec[instr_f]))
        item = Item(id=item_id, instruction=str(rec[instr_f]), answer=str(rec[answer_f]))
        if visual[0] == video_f:
            item.video, item.fps = video_value(rec[video_f], self.image_root, self.allow_outside_root, self.sampling,
                                               rec.get("fps"), f"{self.path}: line {n}")
            item.modality = "video"
            return item
        image = rec[image_f]
        if isinstance(image, str):
            image = image_path(image, self.image_root, self.allow_outside_root)
        item.image = image
        return item

    def _chat_item(self, rec: dict, n: int) -> Item:
        """A line with `images` or `messages` -> an item carrying the chat (`Item.messages`)."""
        _, instr_f, answer_f, id_f = self.fields
        where = f"{self.path}: line {n}"
        if answer_f not in rec:
            raise ValueError(f"{where} lacks {answer_f!r}; found keys {sorted(rec)} (set source.answer_field)")
        if "messages" in rec:
            messages = rec["messages"]
            if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
                    or messages[-1].get("role") != "user":
                raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} ending with the "
                                 f"user turn that 'answer' answers")
            last = messages[-1].get("content")
            instruction = last if isinstance(last, str) else "\n".join(
                p.get("text", "") for p in last if isinstance(p, dict) and p.get("type") == "text") \
                if isinstance(last, list) else ""
        else:
            images = rec["images"]
            if not isinstance(images, list) or not images or not all(isinstance(x, str) for x in images):
                raise ValueError(f"{where}: 'images' must be a non-empty list of image paths")
            if instr_f not in rec:
                raise ValueError(f"{where} lacks {instr_f!r}; found keys {sorted(rec)} (set source.instruction_field)")
            instruction = str(rec[instr_f])
            messages = [{"role": "user", "content": [{"type": "image", "image": x} for x in images]
                         + [{"type": "text", "text": instruction}]}]
        resolved, first = [], None
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):
                parts = []
                for p in content:
                    if isinstance(p, dict) and p.get("type") == "image" and isinstance(p.get("image"), str):
                        p = {**p, "image": image_path(p["image"], self.image_root, self.allow_outside_root)}
                        first = p["image"] if first is None else first
                    parts.append(p)
                m = {**m, "content": parts}
            resolved.append(m)
        if first is None:
            raise ValueError(f"{where}: the messages hold no image part ({{'type': 'image', 'image': <path>}})")
        item_id = str(rec[id_f]) if rec.get(id_f) is not None else content_id(json.dumps(messages, sort_keys=True))
        return Item(id=item_id, instruction=instruction, answer=str(rec[answer_f]), image=first, messages=resolved)
