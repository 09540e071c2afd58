"""ERNIE-THU's K-Encoder (SPECS §19): shapes, the fusion equations, entity inputs optional."""

from __future__ import annotations

import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.model.knowledge import KnowledgeEncoder

H, E, N = 32, 8, 50


def _encoder(**kw):
    torch.manual_seed(0)
    args = dict(hidden_size=H, num_layers=3, num_heads=2, intermediate_size=64, entity_dim=E,
                entity_heads=2, num_entities=N, dropout=0.0, attention_dropout=0.0)  # fmt: skip
    return KnowledgeEncoder(**{**args, **kw}).eval()


def _links(B=2, T=10):
    links = torch.full((B, T), -1)
    links[0, 1], links[0, 4], links[1, 2] = 7, 11, 7
    return links


def test_shapes_layers_and_entity_table():
    enc = _encoder()
    assert (len(enc.layers), len(enc.aggregators)) == (1, 2)  # null: half, rounded up
    x = torch.randn(2, 10, H)
    out = enc(x, torch.ones(2, 10), output_hidden_states=True, entity_links=_links())
    assert out.last_hidden_state.shape == (2, 10, H)
    assert len(out.hidden_states) == 4 and out.hidden_states[-1] is out.last_hidden_state
    assert out.entity_table is enc.entity_embeddings.weight and out.entity_table.shape == (N, E)
    assert out.entity_hidden_state.shape == (2, 10, E)
    assert (out.entity_hidden_state[_links() < 0] == 0).all()  # entities only where aligned


def test_fusion_layer_equations():
    """One aggregator, computed by hand: h = σ(W̃_t w̃ + W̃_e ẽ + b̃) where a token has an entity,
    σ(W̃_t w̃ + b̃) where not; w = LN(w̃ + W_t h + b_t); e = LN(ẽ + W_e h + b_e)."""
    enc = _encoder(num_layers=1, knowledge_layers=1)
    agg = enc.aggregators[0]
    x, links = torch.randn(2, 10, H), _links()
    out = enc(x, None, entity_links=links)
    w_tilde = agg.attention_norm(x + agg.attention(x))
    has = (links >= 0).unsqueeze(-1).float()
    e0 = enc.entity_embeddings(links.clamp_min(0)) * has
    keys = ((links >= 0) | ~(links >= 0).any(-1, keepdim=True))[:, None, None, :]
    e_tilde = agg.entity_attention_norm(e0 + agg.entity_attention(e0, keys))
    gelu = torch.nn.functional.gelu
    for b, j in [(0, 1), (0, 4), (1, 2), (0, 0), (1, 9)]:
        h = agg.token_in.weight @ w_tilde[b, j] + agg.token_in.bias
        if links[b, j] >= 0:
            h = h + agg.entity_in.weight @ e_tilde[b, j]
        h = gelu(h)
        w = agg.token_out_norm(w_tilde[b, j] + agg.token_out.weight @ h + agg.token_out.bias)
        torch.testing.assert_close(out.last_hidden_state[b, j], w, rtol=1e-5, atol=1e-5)
        if links[b, j] >= 0:
            e = agg.entity_out_norm(e_tilde[b, j] + agg.entity_out.weight @ h + agg.entity_out.bias)
            torch.testing.assert_close(out.entity_hidden_state[b, j], e, rtol=1e-5, atol=1e-5)


def test_paper_activation_outputs():
    enc = _encoder(num_layers=1, knowledge_layers=1, fusion_output="activation")
    agg = enc.aggregators[0]
    x = torch.randn(1, 6, H)
    out = enc(x, None)
    w_tilde = agg.attention_norm(x + agg.attention(x))
    h = torch.nn.functional.gelu(agg.token_in(w_tilde))
    torch.testing.assert_close(out.last_hidden_state, torch.nn.functional.gelu(agg.token_out(h)))


def test_entities_change_the_aligned_tokens_and_are_optional():
    enc = _encoder()
    x = torch.randn(2, 10, H)
    plain = enc(x, None).last_hidden_state
    none_aligned = enc(x, None, entity_links=torch.full((2, 10), -1)).last_hidden_state
    torch.testing.assert_close(plain, none_aligned)  # no entity inputs = no alignments
    fused = enc(x, None, entity_links=_links()).last_hidden_state
    assert not torch.allclose(fused[0], plain[0]) and torch.isfinite(fused).all()
    other = _links()
    other[0, 1] = 12
    assert not torch.allclose(enc(x, None, entity_links=other).last_hidden_state[0], fused[0])


def test_padding_and_rows_without_entities_stay_finite():
    enc = _encoder()
    mask = torch.ones(2, 10)
    mask[1, 6:] = 0
    links = torch.full((2, 10), -1)
    links[0, 3] = 5  # row 1 has no entity at all
    out = enc(torch.randn(2, 10, H), mask, entity_links=links)
    assert torch.isfinite(out.last_hidden_state).all()
    assert torch.isfinite(out.entity_hidden_state).all()


@pytest.mark.parametrize("freeze", [True, False])
def test_entity_table_frozen_or_trained(freeze):
    enc = _encoder(freeze_entities=freeze).train()
    out = enc(torch.randn(2, 10, H), None, entity_links=_links())
    out.last_hidden_state.sum().backward()
    grad = enc.entity_embeddings.weight.grad
    assert enc.entity_embeddings.weight.requires_grad is (not freeze)
    assert (grad is None) if freeze else (grad[7].abs().sum() > 0 and grad[0].abs().sum() == 0)


def test_bind_corpus_loads_transe_vectors():
    class Corpus:
        def entity_embeddings(self, settings):
            self.settings = settings
            return torch.arange(20 * E, dtype=torch.float32).reshape(20, E)

    corpus = Corpus()
    enc = _encoder(num_entities=0, transe={"epochs": 3, "norm": 2})
    assert enc.bind_corpus(corpus) == {"num_entities": 20}
    assert corpus.settings.dim == E and corpus.settings.epochs == 3 and corpus.settings.norm == 2
    assert torch.equal(enc.entity_embeddings.weight[3], torch.arange(3 * E, 4 * E).float())
    assert not enc.entity_embeddings.weight.requires_grad


@pytest.mark.parametrize(
    ("kw", "key"),
    [({"entity_heads": 3}, "encoder.entity_heads"), ({"knowledge_layers": 4}, "knowledge_layers"),
     ({"fusion_output": "sum"}, "encoder.fusion_output"), ({"transe": {"norm": 3}}, "transe.norm")],
)  # fmt: skip
def test_bad_settings_name_their_key(kw, key):
    with pytest.raises(ClozelabError, match=key):
        _encoder(**kw)
