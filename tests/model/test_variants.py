"""Embedding and encoder variants: sinusoidal, factorized, role; pre-LN, shared, causal, BiLSTM."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clozelab.core.errors import ClozelabError
from clozelab.model.embeddings import BertEmbeddings
from clozelab.model.embeddings_variants import (
    FactorizedEmbeddings,
    RoleEmbeddings,
    SinusoidalEmbeddings,
    sinusoidal_table,
)
from clozelab.model.encoder import TransformerEncoder
from clozelab.model.encoder_variants import BiLSTMEncoder, TransformerStack, reverse_padded
from clozelab.objectives.mlm import MLM

V, H, T = 40, 16, 7
ARGS = dict(hidden_size=H, num_layers=3, num_heads=2, intermediate_size=32, dropout=0.0,
            attention_dropout=0.0)  # fmt: skip


def test_sinusoidal_table_and_embeddings():
    table = sinusoidal_table(10, 8)
    assert table[3, 2] == pytest.approx(math.sin(3 / 10000 ** (2 / 8)))
    assert table[3, 5] == pytest.approx(math.cos(3 / 10000 ** (4 / 8)))
    emb = SinusoidalEmbeddings(V, H, max_position_embeddings=T, dropout=0.0)
    assert not any("position" in n for n, _ in emb.named_parameters())
    ids = torch.randint(1, V, (2, T))
    expected = F.layer_norm(emb.word_embeddings(ids) + sinusoidal_table(T, H)
                            + emb.token_type_embeddings.weight[0], (H,), eps=1e-12)  # fmt: skip
    torch.testing.assert_close(emb(ids), expected)
    with pytest.raises(ClozelabError, match="max_seq_length"):
        emb(torch.ones(1, T + 1, dtype=torch.long))


def test_factorized_embeddings_shapes_parameters_and_tied_mlm():
    emb = FactorizedEmbeddings(V, H, embedding_size=6, max_position_embeddings=T, dropout=0.0)
    assert emb.word_embeddings.weight.shape == (V, 6)
    assert emb.projection.weight.shape == (H, 6)
    ids = torch.randint(1, V, (2, T))
    out = emb(ids)
    assert out.shape == (2, T, H)
    inner = F.layer_norm(emb.word_embeddings(ids) + emb.position_embeddings.weight[:T]
                         + emb.token_type_embeddings.weight[0], (6,), eps=1e-12)  # fmt: skip
    torch.testing.assert_close(out, emb.projection(inner))
    mlm = MLM(H, V, embedding_size=6)
    assert mlm.logits(torch.randn(3, H), emb).shape == (3, V)
    with pytest.raises(ClozelabError, match="embedding_size"):
        FactorizedEmbeddings(V, H, embedding_size=0)


def test_role_embeddings_replace_segments():
    emb = RoleEmbeddings(V, H, max_position_embeddings=T, dropout=0.0)
    ids = torch.randint(1, V, (1, T))
    roles = torch.tensor([[0, 0, 1, 1, 1, 0, 0]])
    base = emb.word_embeddings(ids) + emb.position_embeddings.weight[:T]
    expected = F.layer_norm(base + emb.role_embeddings(roles), (H,), eps=1e-12)
    torch.testing.assert_close(emb(ids, torch.zeros_like(ids), role_ids=roles), expected)
    text = F.layer_norm(base + emb.token_type_embeddings.weight[0], (H,), eps=1e-12)
    torch.testing.assert_close(emb(ids), text)
    with pytest.raises(ClozelabError, match="role"):
        SinusoidalEmbeddings(V, H)(ids, role_ids=roles)


def test_post_ln_stack_equals_the_bert_encoder():
    torch.manual_seed(0)
    bert = TransformerEncoder(**ARGS)
    stack = TransformerStack(**ARGS, norm="post")
    stack.load_state_dict(bert.state_dict())
    x = torch.randn(2, T, H)
    mask = torch.tensor([[1] * T, [1] * 4 + [0] * 3])
    torch.testing.assert_close(stack(x, mask).last_hidden_state, bert(x, mask).last_hidden_state)


def test_pre_ln_layer_by_hand():
    torch.manual_seed(0)
    stack = TransformerStack(**{**ARGS, "num_layers": 1}, norm="pre")
    layer = stack.layers[0]
    x = torch.randn(2, T, H)
    a = x + layer.attention(layer.attention_norm(x))
    y = a + layer.feed_forward(layer.output_norm(a))
    torch.testing.assert_close(stack(x).last_hidden_state, stack.final_norm(y))
    out = stack(x, output_hidden_states=True)
    assert len(out.hidden_states) == 2 and out.hidden_states[-1] is out.last_hidden_state


def test_shared_layers():
    shared = TransformerStack(**ARGS, norm="post", share_layers=True)
    single = TransformerStack(**{**ARGS, "num_layers": 1}, norm="post")
    assert len(shared.layers) == 1
    assert sum(p.numel() for p in shared.parameters()) == sum(
        p.numel() for p in single.parameters()
    )
    x = torch.randn(2, T, H)
    layer = shared.layers[0]
    torch.testing.assert_close(shared(x).last_hidden_state, layer(layer(layer(x))))
    assert len(shared(x, output_hidden_states=True).hidden_states) == 4


def test_causal_attention_never_sees_the_future():
    torch.manual_seed(0)
    enc = TransformerStack(**ARGS, causal=True).eval()
    x = torch.randn(2, T, H)
    y = x.clone()
    y[:, 4:] = torch.randn(2, T - 4, H)
    torch.testing.assert_close(enc(x).last_hidden_state[:, :4], enc(y).last_hidden_state[:, :4])
    assert not torch.allclose(enc(x).last_hidden_state[:, 4:], enc(y).last_hidden_state[:, 4:])
    mask = torch.tensor([[1] * T, [1] * 5 + [0] * 2])
    out = enc(x, mask).last_hidden_state
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1, :5], enc(x[1:, :5]).last_hidden_state[0])
    bidirectional = TransformerStack(**ARGS, causal=False).eval()
    bidirectional.load_state_dict(enc.state_dict())
    assert not torch.allclose(bidirectional(x).last_hidden_state[:, :4],
                              bidirectional(y).last_hidden_state[:, :4])  # fmt: skip


def test_reverse_padded():
    x = torch.arange(10).view(2, 5, 1)
    out = reverse_padded(x, torch.tensor([5, 3]))
    assert out[..., 0].tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]


def test_bilstm_directions_and_padding():
    torch.manual_seed(0)
    enc = BiLSTMEncoder(H, num_layers=2, dropout=0.0)
    x = torch.randn(2, T, H)
    y = x.clone()
    y[:, 4] = torch.randn(2, H)
    half = H // 2
    a, b = enc(x).last_hidden_state, enc(y).last_hidden_state
    assert a.shape == (2, T, H)
    torch.testing.assert_close(a[:, :4, :half], b[:, :4, :half])  # forward: only <= t
    torch.testing.assert_close(a[:, 5:, half:], b[:, 5:, half:])  # backward: only >= t
    assert not torch.allclose(a[:, 4:, :half], b[:, 4:, :half])
    mask = torch.tensor([[1] * T, [1] * 5 + [0] * 2])
    padded = enc(x, mask).last_hidden_state
    torch.testing.assert_close(padded[1, :5], enc(x[1:, :5]).last_hidden_state[0])
    assert len(enc(x, output_hidden_states=True).hidden_states) == 3
    with pytest.raises(ClozelabError, match="even"):
        BiLSTMEncoder(15)


def test_bad_switches_are_refused():
    with pytest.raises(ClozelabError, match="encoder.norm"):
        TransformerStack(**ARGS, norm="sandwich")
    with pytest.raises(ClozelabError, match="num_heads"):
        TransformerStack(**{**ARGS, "num_heads": 3})


def test_variants_are_not_exported_as_hf_bert():
    from clozelab.model.hf import to_hf_state_dict

    with pytest.raises(ClozelabError, match="post_ln"):
        to_hf_state_dict(BertEmbeddings(V, H), TransformerStack(**ARGS, norm="post"))
    with pytest.raises(ClozelabError, match="post_ln"):
        to_hf_state_dict(FactorizedEmbeddings(V, H, 8), TransformerEncoder(**ARGS))
