"""`hf_dataset`: a dataset saved locally with `datasets`' `save_to_disk` (never downloaded here).

Column names are config. An image column of the `Image` feature is read undecoded, so a broken
image fails inside the per-item handling (skipped with its reason) instead of while indexing; a
string column (or an `Image` value without bytes) is taken as a path relative to `image_root`
(default: the dataset folder), which it must not leave unless `allow_outside_root`. The answer column
may hold several reference answers (VQA sets hold ten annotators'), as a list of strings, a list of
{"answer": ...} records, or the {"answer": [...], ...} columns `datasets` makes of a sequence of records:
all of them become `Item.answers` (correctness accepts any; correctness=vqa scores VQAv2's soft accuracy),
the first `Item.answer`. Ids come from `id_column`, or are `<folder name>-<index>` (stable for the same
saved dataset).
"""
from __future__ import annotations

import os
from typing import Any

from data_gen.images import image_path
from data_gen.sources.base import SOURCES, Item, Source


@SOURCES.register("hf_dataset")
class HFDatasetSource(Source):
    def __init__(self, path: str, split: str | None = "train", image_column: str = "image",
                 instruction_column: str = "question", answer_column: str = "answer",
                 id_column: str | None = None, image_root: str | None = None, allow_outside_root: bool = False):
        try:
            import datasets  # heavy and optional: only this source needs it
        except ImportError as e:
            raise ImportError("source=hf_dataset needs the `datasets` package: pip install datasets "
                              "(or pip install -e '.[data_gen]')") from e
        if not os.path.isdir(path):
            raise FileNotFoundError(f"hf_dataset source: no folder {path!r}; set source.path to a folder "
                                    f"written by datasets' save_to_disk")
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise KeyError(f"hf_dataset {path}: no split {split!r}; available: {list(ds)} (set source.split=...)")
            ds = ds[split]
        missing = [c for c in (image_column, instruction_column, answer_column, id_column)
                   if c is not None and c not in ds.column_names]
        if missing:
            raise KeyError(f"hf_dataset {path}: no column(s) {missing}; columns: {ds.column_names} "
                           f"(set source.image_column / instruction_column / answer_column / id_column)")
        if isinstance(ds.features[image_column], datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self.ds, self.path, self.allow_outside_root = ds, path, bool(allow_outside_root)
        self.image_root = image_root if image_root is not None else path
        self.columns = (image_column, instruction_column, answer_column, id_column)
        self.name = os.path.basename(os.path.normpath(path))
        self._ids: list | None = None  # the id column, read on first use

    @property
    def unique_ids(self) -> bool:
        return self.columns[3] is None  # <folder name>-<row index>

    def item_id(self, i: int) -> str:
        """From the id column alone: a row would also read its image bytes."""
        if self._ids is None:
            self._ids = self.ds[self.columns[3]]
        return str(self._ids[i])

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Item:
        image_c, instr_c, answer_c, id_c = self.columns
        row = self.ds[i]
        image = row[image_c]
        if isinstance(image, dict) and not image.get("bytes") and isinstance(image.get("path"), str):
            image = image["path"]
        if isinstance(image, str):
            image = image_path(image, self.image_root, self.allow_outside_root)
        answers = reference_answers(row[answer_c], answer_c)
        item_id = str(row[id_c]) if id_c is not None else f"{self.name}-{i}"
        return Item(id=item_id, instruction=str(row[instr_c] or ""), answer=answers[0] if answers else "",
                    image=image, answers=answers)


def reference_answers(value: Any, column: str = "answer") -> list[str]:
    """An answer cell -> its reference answers: "cat" -> ["cat"]; ["cat", "kitten"]; [{"answer": "cat"}, ...]
    (VQAv2's records) or {"answer": ["cat", ...], "answer_id": [...]} (the same records as `datasets`
    stores a sequence of them) -> ["cat", ...]; None -> []."""
    if isinstance(value, dict):
        if "answer" not in value:
            raise ValueError(f"hf_dataset: answer column {column!r} holds records with keys {sorted(value)}, "
                             f"expected an 'answer' key (VQA records); set source.answer_column to the column "
                             f"of answer strings")
        value = value["answer"]
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in reference_answers(v, column)]
    return [str(value)]
