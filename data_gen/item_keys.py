"""The manifest key of each source item: its id made safe, its index when the record cannot be read, and
`<key>#<index>` for a repeated id (only the first copy is labelled, whatever the world size)."""
from __future__ import annotations

from data_gen.sources.base import Item, Source
from data_gen.writer import index_key, safe_key


def duplicate_ids(source: Source, n: int, progress: bool = False) -> dict[int, int]:
    """{index: index of the first item with the same key} for items 0..n-1 whose id repeats an earlier
    one's. Every rank computes the same map, so the first copy wins whatever the world size. Sources
    whose ids are unique by construction (`unique_ids = True`) are not scanned."""
    if getattr(source, "unique_ids", False):
        return {}
    from tqdm import tqdm

    item_id = getattr(source, "item_id", None) or (lambda i: source[i].id)  # a duck-typed source
    first: dict[str, int] = {}
    dups: dict[int, int] = {}
    for i in tqdm(range(n), desc="checking item ids", unit="item", disable=not progress or n < 10_000):
        try:
            key = safe_key(item_id(i))
        except Exception:  # a malformed record: the loop records it as bad_item
            continue
        j = first.setdefault(key, i)
        if j != i:
            dups[i] = j
    return dups


def read_item(source: Source, i: int, dups: dict[int, int]) -> tuple[str, Item | None, str | None, str]:
    """Item i -> (manifest key, item or None, skip reason or None, detail). A malformed record is keyed
    by its index, which is stable for the source; a repeated id by its key and index ('#' never occurs
    in a sample key), so that its skip line never stands for the first copy's sample."""
    try:
        item = source[i]
        key = safe_key(item.id)
    except Exception as e:
        return index_key(i), None, "bad_item", f"{type(e).__name__}: {e}"
    if i in dups:
        return (f"{key}#{i}", None, "duplicate_id",
                f"id {item.id!r} is also item {dups[i]}'s, which is the one labelled; give every item its own id")
    return key, item, None, ""

