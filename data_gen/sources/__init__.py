"""Where (image or video, instruction, reference answer) items come from, registered by name."""
from data_gen.sources.base import SOURCES, Item, Source, get_source

__all__ = ["SOURCES", "Item", "Source", "get_source"]
