"""Encoding examples: pairs, first-subword word labels, QA windows and targets."""

from __future__ import annotations

from clozelab.tasks.features import encode_qa, encode_text, encode_tokens, pad_batch
from clozelab.tasks.readers import QAExample, TextExample, TokenExample


def _tok(tiny_tokenizer_dir):
    from clozelab.data.tokenizer import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)


def test_pair_layout_and_truncation(tiny_tokenizer_dir):
    tok = _tok(tiny_tokenizer_dir)
    ex = TextExample("the river " * 20, "a city", "1")
    (f,) = encode_text(tok, [ex], 16, ["0", "1"])
    ids, types = f["input_ids"], f["token_type_ids"]
    assert len(ids) == 16 and ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    assert ids.count(tok.sep_id) == 2 and types[-1] == 1 and types[0] == 0
    assert f["labels"] == 1


def test_first_subword_labels(tmp_path):
    from clozelab.data.tokenizer import load_tokenizer

    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "river",
        "##king",
        "crossed",
        "the",
        "ocean",
        "##que",
        "##en",
    ]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", "utf-8")
    tok = load_tokenizer(tmp_path / "vocab.txt")
    words = ["riverking", "crossed", "the", "oceanqueen"]
    enc = tok.hf.encode_batch([words], is_pretokenized=True, add_special_tokens=False)[0]
    assert len(enc.ids) > len(words), "the test needs words split into several subwords"
    (f,) = encode_tokens(tok, [TokenExample(words, ["B-PER", "O", "O", "B-LOC"])], 64,
                         {"O": 0, "B-PER": 1, "B-LOC": 2})  # fmt: skip
    first = [enc.word_ids.index(w) + 1 for w in range(len(words))]
    assert f["word_starts"] == first
    assert f["word_labels"] == [1, 0, 0, 2]
    batch = pad_batch([f], tok.pad_id)
    assert batch["word_mask"].sum() == 4


def test_truncated_words_are_dropped(tiny_tokenizer_dir):
    tok = _tok(tiny_tokenizer_dir)
    words = ["river"] * 30
    (f,) = encode_tokens(tok, [TokenExample(words, ["O"] * 30)], 10, {"O": 0})
    enc = tok.hf.encode_batch([words], is_pretokenized=True, add_special_tokens=False)[0]
    fitting = len(set(enc.word_ids[:8]))  # words with a first subword among the 8 kept tokens
    assert len(f["input_ids"]) == 10 and f["n_words"] == 30
    assert len(f["word_starts"]) == fitting < 30


def test_qa_windows_cover_the_answer_and_mark_the_passage(tiny_tokenizer_dir):
    tok = _tok(tiny_tokenizer_dir)
    context = " ".join(["river"] * 40 + ["Paris"] + ["ocean"] * 40)
    start = context.index("Paris")
    ex = QAExample("q", "where is the city", context, ["Paris"], [start])
    feats = encode_qa(tok, [ex], max_len=32, doc_stride=10, max_query_len=8)
    assert len(feats) > 3
    found = [f for f in feats if f["start_positions"] > 0]
    assert found
    for f in found:
        s, e = f["offsets"][f["start_positions"]], f["offsets"][f["end_positions"]]
        assert context[s[0] : e[1]] == "Paris"
    for f in feats:
        assert len(f["input_ids"]) <= 32
        question_part = f["token_type_ids"].index(1)
        assert all(o is None for o in f["offsets"][:question_part])
        assert f["offsets"][-1] is None  # the final [SEP]
