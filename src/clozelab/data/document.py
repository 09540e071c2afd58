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
    files); ``None`` means "split me" (see ``clozelab.data.sentences``). ``title`` names the
    document where the source does (a Wikipedia article's title: the head of its links);
    ``links``, when given, holds for each span of ``entities`` the entity it mentions (the
    article a Wikipedia anchor links to, a gazetteer name), None where unknown.
    """

    id: str
    text: str
    entities: list[tuple[int, int]] = field(default_factory=list)
    sentences: list[tuple[int, int]] | None = None
    title: str | None = None
    links: list[str | None] | None = None
