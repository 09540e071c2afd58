"""Streaming reader for MediaWiki XML dumps (``pages-articles.xml[.bz2]``).

``iter_wikipedia`` walks the dump with ``xml.etree.ElementTree.iterparse`` and clears every page
once it is read, so memory stays flat on a full English Wikipedia dump. Only main-namespace
(``ns 0``) articles that are not redirects are kept. Their wikitext is cleaned to prose by
``clean_wikitext`` and the anchors of internal links become ``Document.entities``, the articles
they link to ``Document.links`` and the page title ``Document.title`` (the link graph of
``clozelab.data.knowledge``).

Cleaning, in order (each step a compiled regex or one linear scan):

1. control characters out (``\\x01``/``\\x02`` are reserved below as link markers);
2. ``<!-- comments -->``; ``<ref>...</ref>``, ``<ref/>`` and other tags whose content is not
   prose (``math``, ``gallery``, ``timeline``, ``syntaxhighlight``, ``score`` ...);
3. templates ``{{...}}`` (nested, ``{{{params}}}`` included) and tables ``{|...|}`` in one
   brace-depth scan;
4. heading lines (``== ... ==``) dropped;
5. links ``[[...]]`` in one bracket-depth scan: ``File:``/``Image:``/``Media:``/``Category:``
   links (captions with nested links included) and interlanguage links (``[[de:...]]``) dropped;
   other interwiki links (``[[wikt:x|y]]``) keep their text; article links keep their anchor
   (``[[T|a]]`` -> ``a``, ``[[T]]`` -> ``T``, ``[[T]]s`` -> ``Ts``) between two marker
   characters that survive the later steps and become the entity spans at the end;
6. external links: ``[http://x text]`` -> ``text``, bare ``[http://x]`` dropped;
7. HTML tags (inner text kept, ``<br>`` -> space), ``__MAGIC__`` words;
8. bold/italic quote runs (``''``, ``'''``, ``'''''``);
9. HTML entities (``html.unescape``);
10. list bullets/indents (``*``, ``#``, ``:``, ``;``) and ``----`` rules;
11. whitespace collapsed, lines without a letter dropped, marker pairs turned into spans.

Malformed input: an unclosed ``{{`` or ``{|`` is dropped by itself (the text after it is kept);
an unclosed ``[[`` is dropped; a truncated or invalid dump (XML or bz2/gzip stream) raises
``ClozelabError`` naming the file and, for XML errors, the line -- after the pages read before
the damage have been yielded.
"""

from __future__ import annotations

import bz2
import gzip
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import BinaryIO

from clozelab.core.errors import config_error
from clozelab.data.document import Document

__all__ = [
    "article_title",
    "clean_wikitext",
    "clean_wikitext_links",
    "iter_wikipedia",
    "open_maybe_compressed",
]

# Markers around link anchors while the text is being cleaned (stripped from the input first).
_OPEN = "\x01"
_CLOSE = "\x02"

# The opening marker is followed by one character of this private-use plane that numbers the link
# (its target in the list ``_replace_links`` fills); input characters of the plane are removed.
_LINK_BASE = 0xF0000
_MAX_LINKS = 0xFFFE  # links of one page that can carry their target
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\r\U000F0000-\U000FFFFF]")
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)

# Tags whose content is not prose: the tag and everything inside it go.
_DROP_TAGS = (
    "ref|references|math|chem|ce|gallery|timeline|syntaxhighlight|source|score|imagemap|graph|"
    "mapframe|maplink|hiero|templatestyles|templatedata|inputbox|categorytree|indicator|"
    "section|charinsert|noinclude|onlyinclude"
)
_DROP_TAG = re.compile(rf"<(/?)({_DROP_TAGS})\b[^<>]*?(/?)\s*>", re.I)
_DROP_CLOSER = re.compile(rf"</({_DROP_TAGS})\b[^<>]*>", re.I)

# One scan for templates and tables. A table opens/closes at the start of a line.
_BRACES = re.compile(r"\{\{|\}\}|\{\||\|\}")
_MAX_BRACE_RESCANS = 32

_HEADING = re.compile(r"^[ \t]*=[^\n]*=[ \t]*$", re.M)

_BRACKETS = re.compile(r"\[\[|\]\]")
_LINKTRAIL = re.compile(r"[a-z]+")
_DROPPED_NAMESPACES = frozenset({"file", "image", "media", "category"})
_INTERWIKI = frozenset(
    {
        "wikt", "wiktionary", "w", "wikipedia", "wp", "project", "s", "wikisource", "q",
        "wikiquote", "n", "wikinews", "b", "wikibooks", "v", "wikiversity", "voy",
        "wikivoyage", "d", "wikidata", "c", "commons", "m", "meta", "metawikipedia", "mw",
        "mediawikiwiki", "species", "wikispecies", "foundation", "wmf", "help", "template",
        "portal", "user", "user talk", "talk", "special", "draft", "module", "mediawiki",
        "book", "timedtext", "gadget", "topic", "education program", "wikipedia talk",
        "file talk", "template talk", "category talk", "help talk", "portal talk",
        "draft talk", "module talk", "mediawiki talk", "book talk", "oldwikisource",
        "incubator", "outreach", "testwiki", "phab", "phabricator", "bugzilla", "doi",
        "arxiv", "google", "imdbname", "imdbtitle", "iarchive",
    }
)  # fmt: skip
_LANGUAGE_PREFIX = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8})*|simple")
_PIPE_TRICK = re.compile(r"\s*\([^()]*\)\s*$")
_INNER_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]")

_EXTERNAL_LINK = re.compile(
    r"\[(?:https?:|ftps?:|mailto:|news:|irc:|ircs:|gopher:|//)[^\s\]]*(?:[ \t]+([^\]\n]*))?\]",
    re.I,
)
_BR = re.compile(r"<br\s*/?\s*>", re.I)
_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^<>\x01\x02]*?/?>|__[A-Z]+__")
_QUOTES = re.compile(r"'{2,}")
_LIST_MARKER = re.compile(r"^[ \t]*(?:[*#:;]+|-{4,})[ \t]*", re.M)

_ODD_SPACE = re.compile(r"[^\S \n]")  # whitespace other than " " and "\n"
_MULTI_SPACE = re.compile(r"  +")
_EMPTY_PARENS = re.compile(r"\([ ,;]*\)")
_LETTER = re.compile(r"[^\W\d_]")
_MARKERS = re.compile(rf"{_OPEN}[\U000F0000-\U000FFFFD]|{_CLOSE}")
_OPEN_SPACE = re.compile(rf"({_OPEN}[\U000F0000-\U000FFFFD]) ")
_EMPTY_LINK = re.compile(rf"{_OPEN}[\U000F0000-\U000FFFFD]{_CLOSE}")


def open_maybe_compressed(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing bz2 or gzip by its magic bytes."""
    with open(path, "rb") as f:
        magic = f.read(3)
    if magic == b"BZh":
        return bz2.open(path, "rb")  # type: ignore[return-value]
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def iter_wikipedia(
    path: str | PathLike[str],
    *,
    min_chars: int = 200,
    max_docs: int | None = None,
    key: str = "data.corpus",
) -> Iterator[Document]:
    """Yield the main-namespace articles of a MediaWiki XML dump as clean ``Document``s.

    ``path`` is a ``.xml`` dump, bz2- or gzip-compressed or not (detected from the bytes, so
    any file name works). Redirects, non-article namespaces and articles shorter than
    ``min_chars`` characters after cleaning are skipped; ``max_docs`` stops after that many
    documents. ``Document.id`` is the page id; ``Document.entities`` are the anchors of the
    internal links. ``key`` names the config key in error messages.
    """
    path = Path(path)
    if not path.is_file():
        raise config_error(
            key, str(path), "no such file", "point it at a MediaWiki XML dump (.xml or .xml.bz2)"
        )
    if max_docs is not None and max_docs <= 0:
        return
    try:
        stream = open_maybe_compressed(path)
    except OSError as exc:
        raise config_error(key, str(path), f"cannot open ({exc})", "check the path") from exc
    n_docs = 0
    with stream:
        root: ET.Element | None = None
        try:
            for event, elem in ET.iterparse(stream, events=("start", "end")):
                if root is None:
                    root = elem
                    if _local(elem.tag) != "mediawiki":
                        raise config_error(
                            key,
                            str(path),
                            f"not a MediaWiki XML dump (root element <{_local(elem.tag)}>)",
                            "pass a Wikipedia pages-articles dump (.xml or .xml.bz2)",
                        )
                    continue
                if event != "end" or _local(elem.tag) != "page":
                    continue
                doc = _page_to_document(elem, min_chars)
                root.clear()  # drop every finished page so memory stays flat
                if doc is not None:
                    yield doc
                    n_docs += 1
                    if max_docs is not None and n_docs >= max_docs:
                        return
        except ET.ParseError as exc:
            line, column = exc.position
            raise config_error(
                key,
                str(path),
                f"malformed or truncated XML at line {line}, column {column}; "
                f"{n_docs} documents were read before it",
                "re-download the dump or check that the file is a complete MediaWiki XML dump",
            ) from exc
        except (EOFError, OSError, UnicodeDecodeError) as exc:
            raise config_error(
                key,
                str(path),
                f"the compressed stream is damaged or truncated ({exc}); "
                f"{n_docs} documents were read before it",
                "re-download the dump or check that the file is complete",
            ) from exc
        if root is None:
            raise config_error(
                key,
                str(path),
                "no XML found in the file",
                "pass a Wikipedia pages-articles dump (.xml or .xml.bz2)",
            )


def _page_to_document(page: ET.Element, min_chars: int) -> Document | None:
    ns = page_id = text = title = None
    for child in page:
        name = _local(child.tag)
        if name == "title":
            title = article_title(child.text or "")
        elif name == "ns":
            ns = (child.text or "").strip()
        elif name == "id":
            page_id = (child.text or "").strip()
        elif name == "redirect":
            return None
        elif name == "revision":
            for sub in child:
                if _local(sub.tag) == "text":
                    text = sub.text or ""
    if ns != "0" or not text or not page_id:
        return None
    if text.lstrip()[:9].upper() == "#REDIRECT":
        return None
    clean, entities, targets = clean_wikitext_links(text)
    if len(clean) < min_chars:
        return None
    return Document(id=page_id, text=clean, entities=entities, title=title, links=targets)


def clean_wikitext(wikitext: str) -> tuple[str, list[tuple[int, int]]]:
    """Turn wikitext into prose; return the text and the char spans of its link anchors."""
    text, entities, _ = clean_wikitext_links(wikitext)
    return text, entities


def article_title(target: str) -> str | None:
    """The article a link target names, as MediaWiki spells titles: the ``#section`` dropped,
    underscores as spaces, runs of spaces collapsed, the first letter upper-cased; None when
    nothing is left."""
    title = " ".join(target.partition("#")[0].replace("_", " ").split())
    return title[:1].upper() + title[1:] if title else None


def clean_wikitext_links(wikitext: str) -> tuple[str, list[tuple[int, int]], list[str | None]]:
    """``clean_wikitext`` plus, for each anchor span, the title of the article it links to
    (``article_title``; None when the target names no article)."""
    targets: list[str | None] = []
    text = _CONTROL.sub("", wikitext)
    text = _COMMENT.sub("", text)
    text = _drop_tags(text)
    text = _strip_templates_and_tables(text)
    text = _HEADING.sub("", text)
    text = _replace_links(text, targets)
    text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    text = _BR.sub(" ", text)
    text = _TAG.sub("", text)
    text = _QUOTES.sub("", text)
    text = html.unescape(text)
    # (html.unescape maps &#1; and &#2; to "", so it cannot forge a marker)
    text = _LIST_MARKER.sub("", text)
    return _finish(text, targets)


def _drop_tags(text: str) -> str:
    """Remove ``<ref>...</ref>``-like elements, ``<ref/>`` and stray tags, in linear time.

    An opening tag with no closing tag of its name after it is dropped alone (its text stays).
    """
    if "<" not in text:
        return text
    last_close: dict[str, int] = {}
    for m in _DROP_CLOSER.finditer(text):
        last_close[m.group(1).lower()] = m.start()
    out: list[str] = []
    seg_start = 0
    inside: str | None = None
    for m in _DROP_TAG.finditer(text):
        closing, name, self_closing = m.group(1), m.group(2).lower(), m.group(3)
        if inside is not None:
            if closing and name == inside:
                inside = None
                seg_start = m.end()
            continue
        out.append(text[seg_start : m.start()])
        seg_start = m.end()
        if not closing and not self_closing and last_close.get(name, -1) > m.start():
            inside = name
    if inside is None:
        out.append(text[seg_start:])
    return "".join(out)


def _strip_templates_and_tables(text: str) -> str:
    """Remove ``{{...}}`` and ``{|...|}`` with one depth scan; unclosed openers are dropped."""
    if "{" not in text and "}" not in text:
        return text
    out: list[str] = []
    pos = 0
    rescans = 0
    while True:
        stack: list[int] = []  # positions of the open constructs
        kinds: list[str] = []  # "t" template, "b" table
        seg_start = scan = pos
        while True:
            m = _BRACES.search(text, scan)
            if m is None:
                break
            start, end = m.span()
            tok = m.group()
            if tok[1] == "|" or tok[0] == "|":  # table "{|" or "|}": only at the start of a line
                line_start = text.rfind("\n", 0, start) + 1
                if text[line_start:start].strip(" \t:"):
                    scan = start + 1
                    continue
                if tok == "|}" and not (stack and kinds[-1] == "b"):
                    scan = start + 1  # "|}}" closing a template, or a stray "|}"
                    continue
            if tok == "{{" or tok == "{|":
                if not stack:
                    out.append(text[seg_start:start])
                stack.append(start)
                kinds.append("t" if tok == "{{" else "b")
            elif tok == "|}" or kinds[-1:] == ["t"]:
                stack.pop()
                kinds.pop()
                if not stack:
                    seg_start = end
            elif not stack:  # stray "}}": drop it
                out.append(text[seg_start:start])
                seg_start = end
            scan = end
        if not stack:
            out.append(text[seg_start:])
            return "".join(out)
        # Unclosed opener: drop it alone and scan the rest again (bounded).
        rescans += 1
        if rescans > _MAX_BRACE_RESCANS:
            return "".join(out)
        pos = stack[0] + 2


def _link_namespace(target: str) -> str | None:
    """The namespace/interwiki prefix of a link target, lower-cased, or None."""
    head, sep, _ = target.partition(":")
    if not sep:
        return None
    return head.strip().lower().replace("_", " ")


def _replace_links(text: str, targets: list[str | None]) -> str:
    """Replace ``[[...]]`` links by their anchors wrapped in markers (see module doc); the opening
    marker carries the number of the link's target, appended to ``targets``."""
    if "[[" not in text:
        return text.replace("]]", "")
    out: list[str] = []
    depth = 0
    seg_start = 0
    link_start = 0
    pos = 0
    for m in _BRACKETS.finditer(text):
        if m.start() < pos:
            continue  # inside a consumed link trail
        if m.group() == "[[":
            if depth == 0:
                out.append(text[seg_start : m.start()])
                link_start = m.end()
            depth += 1
            continue
        if depth == 0:  # stray "]]"
            out.append(text[seg_start : m.start()])
            seg_start = pos = m.end()
            continue
        depth -= 1
        if depth:
            continue
        inner = text[link_start : m.start()]
        end = m.end()
        trail = ""
        tm = _LINKTRAIL.match(text, end)
        if tm is not None:
            trail = tm.group()
            end = tm.end()
        out.append(_render_link(inner, trail, targets))
        seg_start = pos = end
    if depth:  # unclosed "[[": keep the text after it, without the brackets
        rest = text[link_start:]
        out.append(rest.replace("[[", "").replace("]]", ""))
    else:
        out.append(text[seg_start:])
    return "".join(out)


def _render_link(inner: str, trail: str, targets: list[str | None]) -> str:
    raw_target, pipe, anchor = inner.partition("|")
    target = raw_target.strip()
    colon_prefixed = target.startswith(":")
    if colon_prefixed:
        target = target[1:].lstrip()
    ns = _link_namespace(target)
    if ns is not None and not colon_prefixed:
        if ns in _DROPPED_NAMESPACES:
            return ""
        if ns not in _INTERWIKI and _LANGUAGE_PREFIX.fullmatch(target.partition(":")[0].strip()):
            return ""  # interlanguage link
    if "[[" in anchor:  # malformed nesting: keep the inner anchors as plain text
        anchor = _INNER_LINK.sub(r"\1", anchor)
    anchor = anchor.replace("[[", "").replace("]]", "")
    if pipe:
        if not anchor.strip():  # pipe trick: [[Foo (bar)|]] -> Foo
            anchor = _PIPE_TRICK.sub("", target.partition(":")[2] or target)
    else:
        anchor = target
        if ns is not None and ns in _INTERWIKI:
            anchor = target.partition(":")[2]
    anchor = anchor + trail
    if "\n" in anchor:
        return anchor  # MediaWiki does not render links across lines
    is_entity = (ns is None or ns not in _INTERWIKI) and not target.startswith("#")
    if is_entity and not colon_prefixed and len(targets) < _MAX_LINKS:
        targets.append(article_title(target))
        return f"{_OPEN}{chr(_LINK_BASE + len(targets) - 1)}{anchor}{_CLOSE}"
    return anchor


def _finish(text: str, targets: list[str | None]):
    """Collapse whitespace, drop lines without letters, and turn markers into spans (with the
    ``targets`` their opening markers number)."""
    text = _MULTI_SPACE.sub(" ", _ODD_SPACE.sub(" ", text))
    # Move spaces out of the anchors and drop empty ones (runs are single spaces by now).
    text = _OPEN_SPACE.sub(r" \1", text).replace(" " + _CLOSE, _CLOSE + " ")
    text = _EMPTY_LINK.sub("", text)
    text = _EMPTY_PARENS.sub("", text)
    for punct in ",.;)":
        text = text.replace(" " + punct, punct)
    text = _MULTI_SPACE.sub(" ", text)
    text = "\n".join(
        line for line in (raw.strip(" ") for raw in text.split("\n")) if _LETTER.search(line)
    )
    if _OPEN not in text:
        return text.replace(_CLOSE, ""), [], []
    pieces: list[str] = []
    entities: list[tuple[int, int, str | None]] = []
    length = 0
    seg_start = 0
    open_at, link = -1, None
    for m in _MARKERS.finditer(text):
        piece = text[seg_start : m.start()]
        pieces.append(piece)
        length += len(piece)
        seg_start = m.end()
        if m.group()[0] == _OPEN:
            open_at, link = length, targets[ord(m.group()[1]) - _LINK_BASE]
        elif open_at >= 0:
            if length > open_at:
                entities.append((open_at, length, link))
            open_at = -1
    pieces.append(text[seg_start:])
    clean = "".join(pieces)
    kept = [(s, e, t) for s, e, t in entities if clean[s:e].strip() == clean[s:e]]
    return clean, [(s, e) for s, e, _ in kept], [t for _, _, t in kept]
