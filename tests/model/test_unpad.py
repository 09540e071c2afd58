"""encoder.unpad: the packed path computes what the padded path computes, at real tokens."""

from __future__ import annotations

import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.model.encoder import TransformerEncoder
from clozelab.model.encoder_variants import TransformerStack
from clozelab.model.unpad import Packing

H, L, A, FF = 32, 2, 4, 37
ENCODERS = {
    "post_ln": (TransformerEncoder, {}),
    "pre_ln": (TransformerStack, {"norm": "pre"}),
    "shared": (TransformerStack, {"norm": "post", "share_layers": True}),
    "causal": (TransformerStack, {"norm": "post", "causal": True}),
}
CASES = [(name, layout) for name in ENCODERS for layout in ("padded", "nested")
         if not (name == "causal" and layout == "nested")]  # fmt: skip


def heavily_padded(batch: int = 6, length: int = 24, seed: int = 0):
    """Rows of 1..length real tokens (one full row, one of a single token), right padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0], lengths[1] = length, 1
    mask = (torch.arange(length)[None] < lengths[:, None]).long()  # (B, T)
    return torch.randn(batch, length, H, generator=g), mask


def pair(name: str, layout: str, **kw):
    cls, options = ENCODERS[name]
    torch.manual_seed(1)
    padded = cls(H, L, A, FF, **options, **kw)
    torch.manual_seed(1)
    unpadded = cls(H, L, A, FF, **options, **kw, unpad=True, unpad_attention=layout)
    return padded, unpadded


@pytest.mark.parametrize(("name", "layout"), CASES)
def test_same_outputs_and_gradients_at_real_tokens(name, layout):
    padded, unpadded = pair(name, layout, dropout=0.0, attention_dropout=0.0)  # train mode
    x, mask = heavily_padded()
    keep = mask.bool()
    assert keep.float().mean() < 0.75  # heavy padding
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = padded(xa, mask, output_hidden_states=True)
    b = unpadded(xb, mask, output_hidden_states=True)
    assert len(a.hidden_states) == len(b.hidden_states) == L + 1
    assert b.hidden_states[-1] is b.last_hidden_state and b.hidden_states[0] is xb
    for sa, sb in zip(a.hidden_states, b.hidden_states):
        assert sb.shape == sa.shape
        torch.testing.assert_close(sb[keep], sa[keep], atol=1e-5, rtol=1e-5)
    assert b.last_hidden_state[~keep].abs().max() == 0  # padding positions hold zeros

    weights = torch.randn(keep.sum(), H, generator=torch.Generator().manual_seed(5))
    (a.last_hidden_state[keep] * weights).sum().backward()
    (b.last_hidden_state[keep] * weights).sum().backward()
    torch.testing.assert_close(xb.grad[keep], xa.grad[keep], atol=1e-5, rtol=1e-4)
    for (key, pa), pb in zip(padded.named_parameters(), unpadded.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("layout", ["padded", "nested"])
def test_unpadded_batch_and_4d_masks_take_the_padded_path(layout):
    padded, unpadded = (m.eval() for m in pair("post_ln", layout))
    x, mask = heavily_padded()
    with torch.no_grad():
        full = torch.ones_like(mask)
        torch.testing.assert_close(unpadded(x, full).last_hidden_state,
                                   padded(x, full).last_hidden_state, atol=0, rtol=0)  # fmt: skip
        torch.testing.assert_close(unpadded(x).last_hidden_state, padded(x).last_hidden_state,
                                   atol=0, rtol=0)  # fmt: skip
        four_d = mask.bool()[:, None, None, :]
        torch.testing.assert_close(unpadded(x, four_d).last_hidden_state,
                                   padded(x, four_d).last_hidden_state, atol=0, rtol=0)  # fmt: skip


def test_rows_without_tokens_stay_finite():
    _, unpadded = pair("post_ln", "nested")
    x, mask = heavily_padded()
    mask[2] = 0
    with torch.no_grad():
        out = unpadded.eval()(x, mask).last_hidden_state
    assert torch.isfinite(out).all() and out[2].abs().max() == 0


def test_packing_round_trip():
    x, mask = heavily_padded()
    packing = Packing.from_mask(mask.bool(), nested=True)
    n = int(mask.sum())
    packed = packing.pack(x)
    assert packed.shape == (n, H)
    torch.testing.assert_close(packed, x[mask.bool()])
    restored = packing.unpack(packed)
    torch.testing.assert_close(restored, x * mask[..., None])
    assert packing.offsets.tolist() == [0, *mask.sum(1).cumsum(0).tolist()]
    heads = packing.nested(packed.view(n, A, H // A))  # (B, A, j, hs), jagged
    assert heads.size(0) == x.shape[0] and heads.size(1) == A


def test_config_errors():
    with pytest.raises(ClozelabError, match="encoder.unpad_attention"):
        TransformerEncoder(H, L, A, FF, unpad=True, unpad_attention="varlen")
    with pytest.raises(ClozelabError, match="unpad_attention.*padded"):
        TransformerStack(H, L, A, FF, causal=True, unpad=True, unpad_attention="nested")
