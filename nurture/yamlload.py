"""Reading marketers' YAML files safely and once.

Two guards for files anyone with access to `campaigns/` can write:

- An alias budget. YAML anchors and aliases (`&a`, `*a`) let a 12-line file stand for
  billions of values (each line repeating the previous one ten times): composing it is
  cheap, but turning it into data expands every alias. The loader counts, while
  composing, how many values the aliases stand for, and refuses the file at the alias
  that passes MAX_ALIASED_VALUES, before anything is expanded.
- A cache of what a file gave, keyed by its path and stat (inode, size, mtime), so a
  page that looks campaigns up on every request does not parse them again each time.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

MAX_ALIASED_VALUES = 10_000  # values reached through aliases in one file; real files use a few dozen


class BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses a document whose aliases expand past the budget."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> values it stands for, itself included
        self._composed = 0  # values composed so far (each node once)
        self._aliased = 0  # values reached again through aliases

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            self._aliased += self._sizes.get(id(node), 1)  # an alias to a node still open (`&a [*a]`): itself
            if self._aliased > MAX_ALIASED_VALUES:
                raise yaml.composer.ComposerError(
                    None, None,
                    f"the aliases (*name) of this file stand for more than {MAX_ALIASED_VALUES} values: "
                    "write the values out, or use fewer aliases", mark)
            return node
        before = self._composed + self._aliased
        self._composed += 1
        node = super().compose_node(parent, index)
        self._sizes[id(node)] = self._composed + self._aliased - before
        return node


K = tuple[str, int, int, int]
V = TypeVar("V")

# A file changed less than this long before it was looked at may change again within the
# same mtime tick (coarse file system clocks): such a result is not kept (as git does).
_SETTLED_NS = 2_000_000_000


class StatCache(Generic[V]):
    """What `build(path)` gave for each file, reused while the file's stat is unchanged."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._items: dict[K, V] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, build: Callable[[Path], V]) -> V:
        key = _stat_key(path)
        if key is None:
            return build(path)  # unreadable: build says why
        with self._lock:
            if key in self._items:
                return self._items[key]
        value = build(path)
        if time.time_ns() - key[3] >= _SETTLED_NS:
            with self._lock:
                if len(self._items) >= self._size:
                    self._items.clear()
                self._items[key] = value
        return value


def _stat_key(path: Path) -> K | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return os.fspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns
