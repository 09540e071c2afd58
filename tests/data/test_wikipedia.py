"""MediaWiki dump reader: markup cleaning, entity spans, namespaces, damaged dumps."""

from __future__ import annotations

import bz2
import gzip
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clozelab.core.errors import ClozelabError
from clozelab.data.corpus import bundled_wikipedia_path
from clozelab.data.document import Document
from clozelab.data.wikipedia import clean_wikitext, iter_wikipedia

NS = "http://www.mediawiki.org/xml/export-0.11/"

ARTICLE = (
    (
        "{{Infobox person|name=Ada|birth={{birth date|1815|12|10}}|note={{{1|}}}}}\n"
        "'''Ada Lovelace''' was an English [[mathematician]] and [[Writer|writer]]."
        "<ref>{{cite book|title=T}}</ref> She worked on [[Charles Babbage]]'s proposed "
        '[[Analytical Engine|mechanical general-purpose computer]]<ref name="a"/>.\n'
    )
    + """<!-- a hidden
comment -->
== Early life ==
Her father was [[Lord Byron]]. She had many [[friend]]s in &quot;London&quot; &amp; Paris.
{| class="wikitable"
|-
| cell text || more {{tpl|x}}
|}
[[File:Ada.jpg|thumb|Portrait with a [[nested link]] caption]]
* A bullet about [http://example.com the example site] and a bare [http://example.org] link.
# Numbered ''italic'' and <b>bold tag</b> text.
: Indented text with <span style="color:red">a span</span>.
[[Category:Mathematicians]]
[[de:Ada Lovelace]]
"""
)

ARTICLE_TEXT = (
    "Ada Lovelace was an English mathematician and writer. She worked on Charles Babbage's "
    "proposed mechanical general-purpose computer.\n"
    'Her father was Lord Byron. She had many friends in "London" & Paris.\n'
    "A bullet about the example site and a bare link.\n"
    "Numbered italic and bold tag text.\n"
    "Indented text with a span."
)
ARTICLE_ENTITIES = [
    "mathematician",
    "writer",
    "Charles Babbage",
    "mechanical general-purpose computer",
    "Lord Byron",
    "friends",
]

TRICKY = """{{broken template never closed
Before {{a|{{b|{{c}}}}}} after, in [[Paris (France)|]] and [[wikt:cloze|cloze]] words.
See [[:Category:Foo|the category]], the [[#History|history]] and <math>x^2</math> here.
{{Multi
|a=1
|}}
Spaces&nbsp;and caf&eacute; [[ Lisbon ]] end.
"""


def _page(page_id: int, title: str, text: str, ns: int = 0, redirect: bool = False) -> str:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    red = f'<redirect title="{title} target" />' if redirect else ""
    return (
        f"<page><title>{title}</title><ns>{ns}</ns><id>{page_id}</id>{red}"
        f'<revision><id>{page_id * 10}</id><text xml:space="preserve">{escaped}</text>'
        "</revision></page>\n"
    )


def make_dump() -> str:
    pages = [
        _page(101, "Ada Lovelace", ARTICLE),
        _page(102, "AdaL", "#REDIRECT [[Ada Lovelace]]", redirect=True),
        _page(103, "Wikipedia:About", "This page is about the project. " * 20, ns=4),
        _page(104, "Old redirect", "#redirect [[Ada Lovelace]] with no redirect element"),
        _page(105, "Short", "Too short."),
        _page(106, "Tricky", TRICKY),
    ]
    return (
        f'<mediawiki xmlns="{NS}" version="0.11" xml:lang="en"><siteinfo><sitename>W'
        "</sitename></siteinfo>\n" + "".join(pages) + "</mediawiki>\n"
    )


@pytest.fixture(params=["xml", "bz2", "gz", "bz2-no-xml-name"])
def dump(request, tmp_path) -> Path:
    data = make_dump().encode("utf-8")
    if request.param == "xml":
        path = tmp_path / "dump.xml"
        path.write_bytes(data)
    elif request.param == "bz2":
        path = tmp_path / "dump.xml.bz2"
        path.write_bytes(bz2.compress(data))
    elif request.param == "gz":
        path = tmp_path / "dump.xml.gz"
        path.write_bytes(gzip.compress(data))
    else:
        path = tmp_path / "pages-p1p2.bz2"
        path.write_bytes(bz2.compress(data))
    return path


def test_markup_constructs_and_entity_spans(dump):
    docs = list(iter_wikipedia(dump, min_chars=0))
    assert [d.id for d in docs] == ["101", "105", "106"]
    ada = docs[0]
    assert ada.text == ARTICLE_TEXT
    assert [ada.text[s:e] for s, e in ada.entities] == ARTICLE_ENTITIES
    assert ada.sentences is None


def test_redirects_namespaces_and_min_chars(dump):
    ids = [d.id for d in iter_wikipedia(dump)]  # default min_chars=200
    assert ids == ["101"]
    assert [d.id for d in iter_wikipedia(dump, min_chars=0, max_docs=2)] == ["101", "105"]


def test_tricky_markup():
    text, entities = clean_wikitext(TRICKY)
    assert text.split("\n") == [
        "broken template never closed",  # an unclosed "{{" is dropped alone
        "Before after, in Paris and cloze words.",
        "See the category, the history and here.",
        "Spaces and café Lisbon end.",
    ]
    # wikt:, :Category: and #section links keep their text but are not entities
    assert [text[s:e] for s, e in entities] == ["Paris", "Lisbon"]


def test_unclosed_template_keeps_following_text():
    text, _ = clean_wikitext("Intro {{oops no end.\nA full sentence stays here.")
    assert text == "Intro oops no end.\nA full sentence stays here."


def test_table_closing_on_template_line():
    wikitext = "A {{T\n|x=1\n|}} b.\n{|\n|a\n|{{t}}\n|}\nLast line."
    assert clean_wikitext(wikitext)[0] == "A b.\nLast line."


def test_link_trail_and_nested_file_caption():
    text, entities = clean_wikitext(
        "[[Image:X.png|thumb|A [[b|c]] d [[e]]]]The [[cat]]s and [[dog|hound]]ing [[bird]]."
    )
    assert text == "The cats and hounding bird."
    assert [text[s:e] for s, e in entities] == ["cats", "hounding", "bird"]


def test_entities_are_sorted_non_overlapping_and_stripped():
    text, entities = clean_wikitext("x [[ A |  spaced anchor  ]] y [[B|'''bold''']] z [[C|]]")
    assert [text[s:e] for s, e in entities] == ["spaced anchor", "bold", "C"]
    assert text == "x spaced anchor y bold z C"


def test_not_a_mediawiki_dump(tmp_path):
    path = tmp_path / "other.xml"
    path.write_text("<html><body>hello</body></html>", "utf-8")
    with pytest.raises(ClozelabError, match="not a MediaWiki XML dump"):
        list(iter_wikipedia(path))


def test_missing_file(tmp_path):
    with pytest.raises(ClozelabError, match="no such file"):
        list(iter_wikipedia(tmp_path / "nope.xml.bz2"))


def test_truncated_dump_raises_after_yielding_complete_pages(tmp_path):
    data = make_dump().encode("utf-8")
    cut = data.index(b"<page><title>Tricky")  # pages before it are complete
    path = tmp_path / "cut.xml"
    path.write_bytes(data[: cut + 40])
    got = []
    with pytest.raises(ClozelabError, match=r"cut\.xml.*line \d+") as info:
        for doc in iter_wikipedia(path, min_chars=0):
            got.append(doc.id)
    assert got == ["101", "105"]
    assert "Fix:" in str(info.value)


def test_truncated_bz2_stream(tmp_path):
    data = bz2.compress(make_dump().encode("utf-8"))
    path = tmp_path / "cut.xml.bz2"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ClozelabError, match=r"cut\.xml\.bz2"):
        list(iter_wikipedia(path, min_chars=0))


# --- fuzzing: the reader yields valid documents or raises ClozelabError, nothing else ---


def _check_document(doc) -> None:
    assert isinstance(doc.id, str) and doc.id
    assert "\x01" not in doc.text and "\x02" not in doc.text
    prev_end = 0
    for start, end in doc.entities:
        assert prev_end <= start < end <= len(doc.text)
        assert doc.text[start:end].strip() == doc.text[start:end]
        prev_end = end
    for line in doc.text.split("\n"):
        assert line and line == line.strip()


def _read_bytes(data: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            for doc in iter_wikipedia(path, min_chars=0):
                _check_document(doc)
        except ClozelabError:
            pass


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data):
    _read_bytes(data, "random.xml")


@FUZZ
@given(st.integers(min_value=0, max_value=len(make_dump().encode("utf-8"))))
def test_fuzz_truncated_xml(cut):
    _read_bytes(make_dump().encode("utf-8")[:cut], "cut.xml")


@FUZZ
@given(st.integers(min_value=0, max_value=len(bz2.compress(make_dump().encode("utf-8")))))
def test_fuzz_truncated_bz2(cut):
    _read_bytes(bz2.compress(make_dump().encode("utf-8"))[:cut], "cut.xml.bz2")


TOKENS = [*"[]{}|<>!=*#:;'&/- \nabcXYZé\x01\x02", "[[", "]]", "{{", "}}", "{|", "|}", "<ref>"]
TOKENS += ["</ref>", "<ref/>", "<!--", "-->", "File:", "&amp;", "&#1;", "http://x", "''", "=="]
MARKUP = st.lists(st.sampled_from(TOKENS), max_size=200).map("".join)


@settings(max_examples=300, deadline=None)
@given(MARKUP)
def test_fuzz_clean_wikitext(wikitext):
    text, entities = clean_wikitext(wikitext)
    if text:
        _check_document(Document(id="x", text=text, entities=entities))
    else:
        assert entities == []


# --- the real sample shipped with gensim ---


@pytest.fixture(scope="module")
def sample_docs():
    return list(iter_wikipedia(bundled_wikipedia_path()))


def test_bundled_path_is_gensims_datapath():
    gensim_utils = pytest.importorskip("gensim.test.utils")
    path = gensim_utils.datapath(
        "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )
    assert Path(path).resolve() == bundled_wikipedia_path().resolve()


def test_gensim_sample(sample_docs):
    assert len(sample_docs) > 50
    assert len({d.id for d in sample_docs}) == len(sample_docs)
    for doc in sample_docs:
        _check_document(doc)
        assert len(doc.text) >= 200
        for junk in ("[[", "]]", "{{", "}}", "<ref", "{|", "'''", "&amp;", "&quot;", "<!--"):
            assert junk not in doc.text, (doc.id, junk)
    assert sum(len(d.entities) for d in sample_docs) > 1000
    anarchism = next(d for d in sample_docs if d.id == "12")
    assert anarchism.text.startswith("Anarchism is a political philosophy")
    anchors = [anarchism.text[s:e] for s, e in anarchism.entities]
    assert anchors[:2] == ["political philosophy", "self-governed"]
