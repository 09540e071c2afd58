"""TransformerEncoder: shapes, hidden states, padding invariance, masks, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clozelab.core.errors import ClozelabError
from clozelab.model.encoder import (
    EncoderOutput,
    TransformerEncoder,
    attention_with_cpu_dropout,
    key_padding_mask,
)

H, L, A, FF = 32, 2, 4, 37


@pytest.fixture
def encoder() -> TransformerEncoder:
    torch.manual_seed(0)
    return TransformerEncoder(H, L, A, FF).eval()


def test_shapes_and_hidden_states(encoder):
    x = torch.randn(3, 7, H)
    out = encoder(x)
    assert isinstance(out, EncoderOutput)
    assert out.last_hidden_state.shape == (3, 7, H)
    assert out.hidden_states == ()
    out = encoder(x, output_hidden_states=True)
    assert len(out.hidden_states) == L + 1
    assert out.hidden_states[0] is x
    assert out.hidden_states[-1] is out.last_hidden_state
    assert all(h.shape == (3, 7, H) for h in out.hidden_states)


def test_layer_is_post_ln_bert(encoder):
    """One layer recomputed by hand: a = LN(x + O(attn)); y = LN(a + W2 gelu(W1 a))."""
    torch.manual_seed(1)
    x = torch.randn(2, 5, H)
    layer = encoder.layers[0]
    wq, wk, wv = layer.attention.qkv.weight.chunk(3)
    bq, bk, bv = layer.attention.qkv.bias.chunk(3)

    def heads(t):
        return t.view(2, 5, A, H // A).transpose(1, 2)

    q, k, v = heads(F.linear(x, wq, bq)), heads(F.linear(x, wk, bk)), heads(F.linear(x, wv, bv))
    probs = (q @ k.transpose(-1, -2) / (H // A) ** 0.5).softmax(-1)
    ctx = (probs @ v).transpose(1, 2).reshape(2, 5, H)
    a = layer.attention_norm(x + layer.attention.out(ctx))
    ff = layer.feed_forward
    y = layer.output_norm(a + ff.fc2(F.gelu(ff.fc1(a))))
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_real_tokens(encoder):
    torch.manual_seed(2)
    lengths = [7, 4, 2]
    x = torch.randn(3, 7, H)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    padded = encoder(x, mask, output_hidden_states=True).hidden_states
    for i, n in enumerate(lengths):
        alone = encoder(x[i : i + 1, :n], output_hidden_states=True).hidden_states
        for p, a in zip(padded, alone):
            torch.testing.assert_close(p[i, :n], a[0], atol=1e-5, rtol=1e-5)
    # Changing what sits in the padding changes nothing either.
    x2 = x.clone()
    x2[mask == 0] = 100.0
    torch.testing.assert_close(
        encoder(x2, mask).last_hidden_state[mask == 1],
        encoder(x, mask).last_hidden_state[mask == 1],
    )


def test_masks():
    assert key_padding_mask(None) is None
    assert key_padding_mask(torch.ones(2, 5, dtype=torch.long)) is None
    m = key_padding_mask(torch.tensor([[1, 1, 0]]))
    assert m.shape == (1, 1, 1, 3) and m.dtype == torch.bool
    assert m.tolist() == [[[[True, True, False]]]]
    ready = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    assert key_padding_mask(ready) is ready
    with pytest.raises(ClozelabError, match="attention_mask"):
        key_padding_mask(torch.ones(5))


def test_all_ones_mask_equals_no_mask(encoder):
    x = torch.randn(2, 6, H)
    torch.testing.assert_close(
        encoder(x, torch.ones(2, 6)).last_hidden_state, encoder(x).last_hidden_state
    )
    torch.testing.assert_close(
        encoder(x, torch.ones(2, 6, dtype=torch.bool)).last_hidden_state,
        encoder(x).last_hidden_state,
    )


@pytest.mark.parametrize("masked", [False, True])
def test_cpu_dropout_attention_matches_sdpa(masked):
    """With a dropout too small to drop anything, the CPU training path is SDPA's math."""
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    mask = None
    if masked:
        mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()[:, None, None, :]
    ours = attention_with_cpu_dropout(q, k, v, mask, 1e-6)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_training_is_seeded_and_differentiable():
    torch.manual_seed(0)
    enc = TransformerEncoder(H, L, A, FF).train()
    x = torch.randn(2, 6, H)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    torch.manual_seed(5)
    a = enc(x, mask).last_hidden_state
    torch.manual_seed(5)
    b = enc(x, mask).last_hidden_state
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, enc.eval()(x, mask).last_hidden_state)
    a.pow(2).mean().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_fused_qkv_and_init(encoder):
    qkv = encoder.layers[0].attention.qkv
    assert qkv.weight.shape == (3 * H, H)
    assert qkv.bias.abs().sum() == 0
    assert encoder.layers[1].output_norm.weight.eq(1).all()


def test_heads_must_divide_hidden():
    with pytest.raises(ClozelabError, match=r"model\.hidden_size / model\.num_heads.*Fix"):
        TransformerEncoder(30, 2, 4, 64)


def test_other_config_errors():
    with pytest.raises(ClozelabError, match=r"model\.activation"):
        TransformerEncoder(H, L, A, FF, activation="gleu")
    with pytest.raises(ClozelabError, match=r"model\.num_layers"):
        TransformerEncoder(H, 0, A, FF)
    with pytest.raises(ClozelabError, match=r"model\.attention_dropout"):
        TransformerEncoder(H, L, A, FF, attention_dropout=-0.1)


def test_exact_gelu_by_default(encoder):
    assert encoder.activation == "gelu"
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(
        encoder.layers[0].feed_forward.act(x), 0.5 * x * (1 + torch.erf(x / 2**0.5))
    )
