"""BertEmbeddings: shapes, defaults, errors, tying handle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clozelab.core.errors import ClozelabError
from clozelab.model.embeddings import BertEmbeddings

V, H = 99, 32


@pytest.fixture
def emb() -> BertEmbeddings:
    torch.manual_seed(0)
    return BertEmbeddings(V, H, max_position_embeddings=16).eval()


def test_shape_and_word_table(emb):
    ids = torch.randint(0, V, (3, 7))
    assert emb(ids).shape == (3, 7, H)
    assert isinstance(emb.word_embeddings, nn.Embedding)
    assert emb.word_embeddings.weight.shape == (V, H)


def test_defaults_are_segment_zero_and_positions_from_zero(emb):
    ids = torch.randint(0, V, (2, 5))
    explicit = emb(ids, torch.zeros_like(ids), torch.arange(5).expand(2, 5))
    torch.testing.assert_close(emb(ids), explicit)
    torch.testing.assert_close(emb(ids, position_ids=torch.arange(5)), explicit)


def test_sum_then_layer_norm(emb):
    ids = torch.tensor([[5, 6, 7]])
    types = torch.tensor([[0, 1, 1]])
    total = (
        emb.word_embeddings.weight[ids]
        + emb.position_embeddings.weight[:3]
        + emb.token_type_embeddings.weight[types]
    )
    expected = nn.functional.layer_norm(total, (H,), emb.norm.weight, emb.norm.bias, emb.norm.eps)
    torch.testing.assert_close(emb(ids, types), expected)


def test_token_type_changes_output(emb):
    ids = torch.randint(0, V, (1, 4))
    assert not torch.allclose(emb(ids), emb(ids, torch.ones_like(ids)))


def test_pad_row_starts_at_zero_and_init_std():
    torch.manual_seed(0)
    emb = BertEmbeddings(1000, 64, pad_token_id=0)
    assert emb.word_embeddings.weight[0].abs().sum() == 0
    assert emb.word_embeddings.weight[1:].std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(emb.norm.weight == 1) and torch.all(emb.norm.bias == 0)


def test_too_long_names_both_keys(emb):
    with pytest.raises(ClozelabError, match=r"data\.max_seq_length.*model\.max_position"):
        emb(torch.zeros(1, 17, dtype=torch.long))
    assert emb(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, H)


def test_role_ids_refused(emb):
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ClozelabError, match="role_ids"):
        emb(ids, role_ids=torch.zeros_like(ids))


def test_bad_config_values():
    with pytest.raises(ClozelabError, match=r"model\.pad_token_id"):
        BertEmbeddings(10, 8, pad_token_id=10)
    with pytest.raises(ClozelabError, match=r"model\.dropout"):
        BertEmbeddings(10, 8, dropout=1.0)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    emb = BertEmbeddings(V, H, dropout=0.5)
    ids = torch.randint(1, V, (2, 6))
    emb.train()
    dropped = emb(ids)
    assert (dropped == 0).float().mean() > 0.3
    emb.eval()
    torch.testing.assert_close(emb(ids), emb(ids))
    assert (emb(ids) == 0).sum() == 0
