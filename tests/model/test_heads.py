"""Shared blocks: fast dropout, activations, Pooler, LMTransform, BERT initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clozelab.core.errors import ClozelabError
from clozelab.model.dropout import Dropout, dropout, dropout_add
from clozelab.model.layers import (
    LMTransform,
    Pooler,
    canonical_activation,
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


def _residual(fn, x, h, seed):
    torch.manual_seed(seed)
    out = fn(x, h)
    weights = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out * weights).sum().backward()
    grads = x.grad, h.grad
    x.grad = h.grad = None
    return out.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_add_is_residual_plus_dropout_in_one_pass(dtype):
    x = torch.randn(4, 33, 16, dtype=dtype, requires_grad=True)
    h = torch.randn(4, 33, 16, dtype=dtype, requires_grad=True)
    fused, (fx, fh) = _residual(lambda a, b: dropout_add(a, b, 0.3), x, h, seed=5)
    plain, (px, ph) = _residual(lambda a, b: a + dropout(b, 0.3), x, h, seed=5)
    assert dropout_add(x, h, 0.3).grad_fn.name().endswith("_DropoutAddBackward")
    # the same draws, values up to rounding: addcmul rounds x + h * mask once, the plain
    # expression twice (in bf16 that is one unit in the last place of the sum)
    bf16 = dtype == torch.bfloat16
    torch.testing.assert_close(
        fused, plain, rtol=1.6e-2 if bf16 else 1e-6, atol=1e-2 if bf16 else 1e-6
    )
    torch.testing.assert_close(fx, px, rtol=0, atol=0)  # the residual's gradient passes through
    torch.testing.assert_close(fh, ph, rtol=0, atol=0)  # grad * mask, the same mask
    assert bool((fh == 0).any()) and bool((fh != 0).any())


def test_dropout_add_off_mixed_dtypes_and_module_form():
    x, h = torch.randn(8, 8), torch.randn(8, 8)
    torch.testing.assert_close(dropout_add(x, h, 0.1, training=False), x + h)
    torch.testing.assert_close(dropout_add(x, h, 0.0), x + h)
    torch.testing.assert_close(Dropout(0.2).eval().add(x, h), x + h)
    half = h.to(torch.bfloat16)
    torch.manual_seed(2)
    mixed = dropout_add(x, half, 0.2)  # x fp32, h bf16: the unfused expression, same draws
    torch.manual_seed(2)
    torch.testing.assert_close(mixed, x + dropout(half, 0.2))
    assert mixed.dtype == torch.float32
    torch.manual_seed(4)
    a = Dropout(0.2).add(x, h)
    torch.manual_seed(4)
    torch.testing.assert_close(a, dropout_add(x, h, 0.2))


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
