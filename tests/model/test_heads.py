"""Shared blocks: fast dropout, activations, Pooler, LMTransform, BERT initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clozelab.core.errors import ClozelabError
from clozelab.model.layers import (
    Dropout,
    LMTransform,
    Pooler,
    canonical_activation,
    dropout,
    get_activation,
    init_bert_weights,
)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_rate_and_unbiased_scale(p):
    torch.manual_seed(0)
    x = torch.ones(200_001)  # odd size: the 64-bit draws are split into four 16-bit halves
    y = dropout(x, p)
    dropped = (y == 0).double().mean().item()
    assert dropped == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / x.numel()))
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 65536 / (65536 - round(p * 65536))))


def test_dropout_gradient_is_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.3)
    y.sum().backward()
    scale = y.detach() / x.detach()
    torch.testing.assert_close(x.grad, scale)


def test_dropout_identity_when_off_and_seeded():
    x = torch.randn(10, 10)
    assert dropout(x, 0.1, training=False) is x
    assert dropout(x, 0.0) is x
    torch.manual_seed(3)
    a = dropout(x, 0.2)
    torch.manual_seed(3)
    torch.testing.assert_close(dropout(x, 0.2), a)
    module = Dropout(0.2).eval()
    assert module(x) is x
    with pytest.raises(ClozelabError, match=r"model\.dropout"):
        Dropout(1.0)


def test_activations():
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    exact = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    torch.testing.assert_close(get_activation("gelu")(x), exact)
    assert canonical_activation("gelu_new") == "gelu_tanh"
    assert (get_activation("gelu_tanh")(x) - exact).abs().max() < 1e-3
    with pytest.raises(ClozelabError, match=r"model\.activation='gleu'.*Fix"):
        get_activation("gleu")


def test_pooler_reads_position_zero():
    torch.manual_seed(0)
    pooler = Pooler(16)
    h = torch.randn(3, 5, 16)
    out = pooler(h)
    assert out.shape == (3, 16)
    torch.testing.assert_close(out, torch.tanh(pooler.dense(h[:, 0])))
    h2 = h.clone()
    h2[:, 1:] = 0
    torch.testing.assert_close(pooler(h2), out)


def test_lm_transform():
    torch.manual_seed(0)
    t = LMTransform(16, activation="gelu", layer_norm_eps=1e-12)
    h = torch.randn(4, 16)
    expected = nn.functional.layer_norm(
        nn.functional.gelu(t.dense(h)), (16,), t.norm.weight, t.norm.bias, 1e-12
    )
    torch.testing.assert_close(t(h), expected)
    assert LMTransform(16, out_size=8)(h).shape == (4, 8)


def test_init_bert_weights():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(512, 512), nn.LayerNorm(512), nn.Embedding(300, 512))
    nn.init.constant_(m[0].bias, 3.0)
    nn.init.constant_(m[1].weight, 3.0)
    assert init_bert_weights(m, std=0.05) is m
    assert m[0].weight.std().item() == pytest.approx(0.05, rel=0.02)
    assert m[2].weight.std().item() == pytest.approx(0.05, rel=0.02)
    assert m[0].bias.abs().sum() == 0
    assert torch.all(m[1].weight == 1) and torch.all(m[1].bias == 0)
