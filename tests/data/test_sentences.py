"""Sentence splitting with entity remapping."""

from __future__ import annotations

import blingfire
from hypothesis import given, settings
from hypothesis import strategies as st

from clozelab.data.document import Document
from clozelab.data.sentences import _line_sentences, sentence_spans, split_sentences


def _doc(text: str, anchors: list[str], sentences=None) -> Document:
    entities, pos = [], 0
    for anchor in anchors:
        start = text.index(anchor, pos)
        entities.append((start, start + len(anchor)))
        pos = start + len(anchor)
    return Document(id="d", text=text, entities=entities, sentences=sentences)


def test_paragraphs_split_and_entities_remapped():
    text = "Ada met Charles Babbage. She wrote notes.\nThe Analytical Engine was never built."
    doc = _doc(text, ["Ada", "Charles Babbage", "notes", "Analytical Engine"])
    out = split_sentences(doc)
    assert [s for s, _ in out] == [
        "Ada met Charles Babbage.",
        "She wrote notes.",
        "The Analytical Engine was never built.",
    ]
    assert [[s[a:b] for a, b in ents] for s, ents in out] == [
        ["Ada", "Charles Babbage"],
        ["notes"],
        ["Analytical Engine"],
    ]
    assert out[2][1] == [(4, 21)]


def test_entity_crossing_a_boundary_is_dropped():
    text = "It ended in St. Louis. Then it moved on to Paris."
    doc = Document(id="d", text=text, entities=[(12, 27), (43, 48)])  # "St. Louis. Then", "Paris"
    assert split_sentences(doc) == [
        ("It ended in St. Louis.", []),
        ("Then it moved on to Paris.", [(20, 25)]),
    ]


def test_uses_given_sentence_spans_and_strips():
    text = "  one two.  \nthree four.\n\n"
    doc = Document(id="d", text=text, entities=[(2, 5), (13, 18)], sentences=[(0, 12), (13, 24)])
    out = split_sentences(doc)
    assert out == [("one two.", [(0, 3)]), ("three four.", [(0, 5)])]


def test_empty_sentences_dropped():
    doc = Document(id="d", text="\n \nHello there.\n\n", sentences=None)
    assert split_sentences(doc) == [("Hello there.", [])]
    assert split_sentences(Document(id="e", text="", sentences=[(0, 0)])) == []


def test_non_ascii_offsets_match_blingfire():
    line = "Héllo wörld. This is “quoted”. 日本語の文。 Second para. 😀 emoji here! And é"
    assert _line_sentences(line) == blingfire.text_to_sentences_and_offsets(line)[1]
    doc = _doc(line, ["wörld", "“quoted”", "emoji", "é"])
    out = split_sentences(doc)
    assert [s[a:b] for s, ents in out for a, b in ents] == ["wörld", "“quoted”", "emoji", "é"]


def test_text_blingfire_cannot_encode():
    # a lone surrogate makes blingfire's own wrapper raise; the line stays one sentence
    doc = Document(id="d", text="Broken \ud800 text. More.")
    assert [s for s, _ in split_sentences(doc)] == ["Broken \ud800 text. More."]


SENTENCE_TEXT = st.text(
    alphabet=st.sampled_from(list("ab .!?\n\t é日😀\u2028\x00")), min_size=0, max_size=200
)


@settings(max_examples=300, deadline=None)
@given(SENTENCE_TEXT, st.lists(st.tuples(st.integers(0, 200), st.integers(1, 20)), max_size=10))
def test_fuzz_entities_stay_on_their_text(text, raw_spans):
    entities, pos = [], 0
    for start, length in sorted(raw_spans):
        start = max(start, pos)
        end = min(start + length, len(text))
        if start < end:
            entities.append((start, end))
            pos = end
    doc = Document(id="d", text=text, entities=entities)
    spans = sentence_spans(doc)
    out = split_sentences(doc)
    assert len(spans) == len(out)
    prev = 0
    for (start, end), (sentence, ents) in zip(spans, out):
        assert prev <= start < end <= len(text)
        assert sentence == text[start:end] and sentence == sentence.strip() and sentence
        assert "\n" not in sentence
        for a, b in ents:
            assert 0 <= a < b <= len(sentence)
            assert (start + a, start + b) in entities
        prev = end
    # every entity wholly inside a sentence is kept
    kept = {(s + a, s + b) for (s, _), (_, ents) in zip(spans, out) for a, b in ents}
    for e_start, e_end in entities:
        if any(s <= e_start and e_end <= e for s, e in spans):
            assert (e_start, e_end) in kept
