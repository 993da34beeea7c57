"""`llava_json`: LLaVA-style conversation files plus an image folder.

    [{"id": "000001", "image": "coco/train2017/000001.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat is on the table?"},
                        {"from": "gpt", "value": "A laptop."}, ...]}, ...]

Every (human, gpt) turn pair of a record that has one image is an item; the `<image>` tag is
removed from the instruction. Records without an image (text-only) or with several are left out.
A `.jsonl` file (one record per line) is read the same way. Item ids are `<record id>-<turn>`.
"""
from __future__ import annotations

import json
import os

from data_gen.sources.base import SOURCES, Item, Source

IMAGE_TAG = "<image>"


def _read_records(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"llava_json: {path} must hold a JSON list of records, found {type(data).__name__}")
    return data


@SOURCES.register("llava_json")
class LlavaJsonSource(Source):
    def __init__(self, path: str | list[str], image_root: str | None = None):
        paths = [path] if isinstance(path, str) else list(path)
        self.items: list[Item] = []
        seen: set[str] = set()
        for p in paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"llava_json source: no file {p!r}; set source.path=<conversations.json> "
                                        f"and source.image_root=<image folder>")
            root = image_root if image_root is not None else os.path.dirname(os.path.abspath(p))
            stem = os.path.splitext(os.path.basename(p))[0]
            for r, rec in enumerate(_read_records(p)):
                image = rec.get("image")
                if isinstance(image, list):
                    image = image[0] if len(image) == 1 else None
                if not image:
                    continue
                rec_id = str(rec.get("id", f"{stem}-{r}"))
                if rec_id in seen:  # LLaVA files repeat some ids: keep the ids unique and stable
                    rec_id = f"{rec_id}-r{r}"
                seen.add(rec_id)
                path_img = image if os.path.isabs(image) else os.path.join(root, image)
                turns = rec.get("conversations", [])
                for t in range(0, len(turns) - 1, 2):
                    human, gpt = turns[t], turns[t + 1]
                    if human.get("from") != "human" or gpt.get("from") != "gpt":
                        continue
                    instruction = str(human.get("value", "")).replace(IMAGE_TAG, "").strip()
                    self.items.append(Item(id=f"{rec_id}-{t // 2}", instruction=instruction,
                                           answer=str(gpt.get("value", "")).strip(), image=path_img))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Item:
        return self.items[i]
