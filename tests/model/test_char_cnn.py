"""ELMo's character-CNN token encoder: spelling, output shape, highway gates by hand, no position
or segment embeddings, and the elmo_baseline recipe using it (issue 15, item 5)."""

from __future__ import annotations

import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.data.tokenizer import train_wordpiece
from clozelab.model.char_cnn import BOC, BOW, EOW, PAD_CHAR, CharCNNEmbeddings, Highway, spell
from clozelab.model.embeddings import Embedding
from tests.helpers import compose_config


@pytest.fixture(scope="module")
def tokenizer():
    text = ["the king walked along the riverbank singing loudly ."] * 5
    return train_wordpiece(text, vocab_size=120, min_frequency=1)


def small(vocab_size: int, **kw) -> CharCNNEmbeddings:
    torch.manual_seed(0)
    return CharCNNEmbeddings(
        vocab_size, 24, char_embedding_size=8, filters=[[1, 4], [2, 6], [3, 6]], dropout=0.0,
        max_characters=12, **kw,
    )  # fmt: skip


def test_spelling_marks_word_starts_and_pieces():
    assert spell("ab", 6) == [BOW, ord("a") + 4, ord("b") + 4, EOW, PAD_CHAR, PAD_CHAR]
    assert spell("##ab", 6)[:4] == [BOC, ord("a") + 4, ord("b") + 4, EOW]
    assert spell("abcdefgh", 5) == [BOW, *(ord(c) + 4 for c in "abc"), EOW]  # cut to the width
    assert spell("é", 5)[:4] == [BOW, 0xC3 + 4, 0xA9 + 4, EOW]  # UTF-8 bytes


def test_output_shape_and_vocabulary_binding(tokenizer):
    embedding = small(tokenizer.vocab_size)
    assert isinstance(embedding, Embedding)
    embedding.bind_tokenizer(tokenizer)
    vocab = tokenizer.hf.get_vocab()
    assert embedding.token_chars[vocab["king"]].tolist() == spell("king", 12)
    ids = torch.tensor([[vocab["[CLS]"], vocab["the"], vocab["king"], vocab["[SEP]"], 0, 0]])
    out = embedding(ids)
    assert out.shape == (1, 6, 24)
    assert torch.equal(out[0, 4:], torch.zeros(2, 24))  # [PAD] (id 0) is a zero vector
    # each token's vector is the CNN of its own characters: the same id, the same vector
    direct = embedding.token_vectors(ids[0, :4])
    torch.testing.assert_close(out[0, :4], direct)


def test_no_position_or_segment_embeddings(tokenizer):
    embedding = small(tokenizer.vocab_size)
    embedding.bind_tokenizer(tokenizer)
    ids = torch.randint(5, tokenizer.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    out = embedding(ids)
    permutation = torch.tensor([6, 2, 0, 1, 5, 3, 4])
    torch.testing.assert_close(embedding(ids[:, permutation]), out[:, permutation])
    types = torch.ones_like(ids)
    torch.testing.assert_close(embedding(ids, token_type_ids=types), out)
    names = {n for n, _ in embedding.named_parameters()}
    assert not any("position" in n or "token_type" in n for n in names)


def test_highway_gates_by_hand():
    torch.manual_seed(0)
    highway = Highway(3, num_layers=1)
    layer = highway.layers[0]
    assert torch.equal(layer.bias[3:], torch.ones(3))  # the gate starts biased to carry
    x = torch.tensor([[0.5, -1.0, 2.0]])
    with torch.no_grad():
        layer.weight.copy_(torch.arange(18, dtype=torch.float).reshape(6, 3) / 10 - 0.8)
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 1.0, -1.0, 0.0]))
    w, b = layer.weight, layer.bias
    transform = torch.relu(x @ w[:3].T + b[:3])
    gate = torch.sigmoid(x @ w[3:].T + b[3:])
    expected = gate * x + (1 - gate) * transform
    torch.testing.assert_close(highway(x), expected)
    with torch.no_grad():  # a saturated gate passes the input through unchanged
        layer.bias[3:] = 50.0
    torch.testing.assert_close(highway(x), x)


def test_bad_shapes_are_named():
    with pytest.raises(ClozelabError, match="embedding.filters"):
        CharCNNEmbeddings(10, 8, filters=[])
    with pytest.raises(ClozelabError, match="embedding.max_characters"):
        CharCNNEmbeddings(10, 8, filters=[[7, 4]], max_characters=5)


def test_elmo_recipe_uses_the_char_cnn_and_keeps_the_word_variant():
    cfg = compose_config("experiment=elmo_baseline")
    assert cfg.embedding._target_ == "clozelab.model.char_cnn.CharCNNEmbeddings"
    assert cfg.encoder._target_.endswith("BiLSTMEncoder")
    word = compose_config("experiment=elmo_baseline", "embedding=word")
    assert word.embedding._target_ == "clozelab.model.char_cnn.WordEmbeddings"


def test_build_components_spells_the_vocabulary(tokenizer):
    from clozelab.training.components import build_components

    cfg = compose_config("experiment=elmo_baseline", "model=tiny")
    embedding, encoder, objectives, _ = build_components(cfg, tokenizer)
    vocab = tokenizer.hf.get_vocab()
    assert embedding.token_chars[vocab["king"]].tolist() == spell("king", 50)
    ids = torch.tensor([[vocab["[CLS]"], vocab["the"], vocab["king"], vocab["[SEP]"]]])
    hidden = encoder(embedding(ids), torch.ones_like(ids)).last_hidden_state
    assert hidden.shape == (1, 4, cfg.model.hidden_size)
    assert objectives["lm"].bias.shape[0] == embedding.word_embeddings.weight.shape[0]
