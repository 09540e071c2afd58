"""The encoder-decoder layers' hand-written CPU kernels equal the plain autograd formulas."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clozelab.model.seq2seq_layers import RMSNorm, _RMSNormFunction


def test_rms_norm_function_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: _RMSNormFunction.apply(x, w, 1e-6), (x, w))


def test_rms_norm_matches_the_t5_formula_in_value_and_gradient():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 7, 16, requires_grad=True)
    grad = torch.randn(4, 7, 16)
    y = norm(x)  # the CPU function
    ref = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))  # HF T5LayerNorm
    torch.testing.assert_close(y, ref)
    got = torch.autograd.grad(y, (x, norm.weight), grad)
    want = torch.autograd.grad(ref, (x, norm.weight), grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(y, F.rms_norm(x, (16,), norm.weight, 1e-6))
