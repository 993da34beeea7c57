"""`jsonl`: one JSON object per line with a local image path, an instruction, an answer, and an id.

    {"id": "q1", "image": "imgs/cat.jpg", "instruction": "What animal is this?", "answer": "cat"}

Image paths are relative to `image_root` (default: the folder of the jsonl file). Without an id
field, the id is a hash of (image, instruction), so the same line gets the same id in every run.
Lines are parsed when read, so one malformed line is skipped by the loop with its reason.
"""
from __future__ import annotations

import hashlib
import json
import os

from data_gen.sources.base import SOURCES, Item, Source


def content_id(*parts: str) -> str:
    """Stable short id from item content."""
    return hashlib.sha1("\n".join(parts).encode("utf-8")).hexdigest()[:16]


@SOURCES.register("jsonl")
class JsonlSource(Source):
    def __init__(self, path: str, image_root: str | None = None, image_field: str = "image",
                 instruction_field: str = "instruction", answer_field: str = "answer", id_field: str = "id"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"jsonl source: no file {path!r}; set source.path=<file.jsonl> "
                                    f"(one JSON object per line with image, instruction, answer)")
        self.path = path
        self.image_root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
        self.fields = (image_field, instruction_field, answer_field, id_field)
        with open(path, encoding="utf-8") as f:
            self.lines = [line for line in f if line.strip()]

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, i: int) -> Item:
        image_f, instr_f, answer_f, id_f = self.fields
        try:
            rec = json.loads(self.lines[i])
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path}: line {i + 1} is not valid JSON ({e})") from e
        if not isinstance(rec, dict):
            raise ValueError(f"{self.path}: line {i + 1} is not a JSON object")
        missing = [f for f in (image_f, instr_f, answer_f) if f not in rec]
        if missing:
            raise ValueError(f"{self.path}: line {i + 1} lacks {missing}; found keys {sorted(rec)} "
                             f"(set source.image_field/instruction_field/answer_field)")
        image = rec[image_f]
        if isinstance(image, str) and not os.path.isabs(image):
            image = os.path.join(self.image_root, image)
        item_id = str(rec[id_f]) if rec.get(id_f) is not None else content_id(str(rec[image_f]), str(rec[instr_f]))
        return Item(id=item_id, instruction=str(rec[instr_f]), answer=str(rec[answer_f]), image=image)
