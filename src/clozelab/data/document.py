"""The unit every corpus reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Document:
    """One document of a corpus, as clean prose.

    ``text`` is plain text; paragraphs are separated by ``"\\n"`` (a sentence never crosses a
    newline). ``entities`` are ``(start, end)`` character spans of ``text`` (end exclusive), sorted
    and non-overlapping: Wikipedia link anchors, gazetteer hits, or NER spans. ``sentences`` are
    ``(start, end)`` character spans when the source already splits sentences (BERT-format text
    files); ``None`` means "split me" (see ``clozelab.data.sentences``).
    """

    id: str
    text: str
    entities: list[tuple[int, int]] = field(default_factory=list)
    sentences: list[tuple[int, int]] | None = None
