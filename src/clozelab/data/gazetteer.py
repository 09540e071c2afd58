"""Gazetteer entities: entity names from a file, found in text by a token trie.

The file holds one entity name per line, optionally followed by a tab and a type
(``Alan Turing\tPERSON``); blank lines and lines starting with ``#`` are skipped. Text and names
are split the same way into tokens (maximal runs of word characters, and single punctuation
marks) and compared case-insensitively (``str.casefold``), so a name only matches on word
boundaries ("York" is not found inside "Yorkshire", "New York" not in "New-York"). Matching walks
the text once, left to right; at each token the trie gives the longest name starting there, which
is taken and skipped over (leftmost-longest, non-overlapping). The cost is one dict lookup per
token and trie step, whatever the number of names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from clozelab.core.errors import config_error

TOKEN = re.compile(r"\w+|[^\w\s]")
END = ""  # trie key of "a name ends here" (tokens are never empty)


def tokens(text: str) -> list[re.Match]:
    """The matching tokens of ``text`` (with their character offsets)."""
    return list(TOKEN.finditer(text))


class Gazetteer:
    """A token trie of entity names. ``types``: keep only names of these types (names without a
    type are always kept); ``None`` keeps every name."""

    def __init__(self, names: Iterable[tuple[str, str | None]], types: Iterable[str] | None = None):
        keep = None if types is None else {t.casefold() for t in types}
        self.trie: dict = {}
        self.size = 0
        for name, kind in names:
            if keep is not None and kind is not None and kind.casefold() not in keep:
                continue
            words = [m.group().casefold() for m in TOKEN.finditer(name)]
            if not words:
                continue
            node = self.trie
            for word in words:
                node = node.setdefault(word, {})
            if END not in node:
                node[END] = name  # the entity a match mentions: the name as the file spells it
                self.size += 1

    def __len__(self) -> int:
        return self.size

    @classmethod
    def from_file(cls, path: str | Path, types: Iterable[str] | None = None, key="data.gazetteer"):
        path = Path(path).expanduser()
        if not path.is_file():
            raise config_error(
                key,
                str(path),
                "the gazetteer file does not exist",
                f"point {key} to a text file with one entity name per line (optionally "
                "'name<TAB>TYPE')",
            )
        names = []
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.rstrip("\n\r")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                name, _, kind = line.partition("\t")
                names.append((name.strip(), kind.strip() or None))
        gazetteer = cls(names, types)
        if not len(gazetteer):
            raise config_error(
                key, str(path), "the gazetteer holds no entity name", "add one name per line"
            )
        return gazetteer

    def find(self, text: str) -> list[tuple[int, int]]:
        """Character spans ``(start, end)`` of the names in ``text``: sorted, non-overlapping."""
        return self.find_names(text)[0]

    def find_names(self, text: str) -> tuple[list[tuple[int, int]], list[str]]:
        """``find``, plus the entity each span mentions: the name as the file spells it (the
        first line of the names that match alike)."""
        found = tokens(text)
        words = [m.group().casefold() for m in found]
        spans, names = [], []
        i, n = 0, len(words)
        trie = self.trie
        while i < n:
            node = trie.get(words[i])
            last, name = -1, ""
            j = i
            while node is not None:
                if END in node:
                    last, name = j, node[END]
                j += 1
                if j == n:
                    break
                node = node.get(words[j])
            if last < 0:
                i += 1
                continue
            spans.append((found[i].start(), found[last].end()))
            names.append(name)
            i = last + 1
        return spans, names
