"""clozelab's CPU dropout under ``torch.compile`` and the fused ``relu_dropout`` (T5's FFN).

Compiled code draws the keep mask through the operator ``clozelab::dropout_keep_mask``: the same
draws as eager code from the same seed, one mask per call (two dropouts of one tensor must not be
merged by AOTAutograd's common-subexpression pass), gradients through the same masks. The fast
tests trace with ``aot_eager`` (AOTAutograd's graphs and passes, no C++ code generation); the
inductor case is slow (about 20 s of compilation on 2 cores).
"""

from __future__ import annotations

import pytest
import torch

from clozelab.model import dropout as layers
from clozelab.model.dropout import dropout, dropout_add, relu_dropout


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _two_of_one_and_relu(x):
    """Two dropouts of one tensor (R-Drop's pattern), a fused relu + dropout and a residual
    with dropout."""
    return dropout(x, 0.5), dropout(x, 0.5), relu_dropout(x, 0.3), dropout_add(x, x * 2, 0.2)


def _values_and_gradient(fn, x, seed):
    torch.manual_seed(seed)
    outs = fn(x)
    sum(i * out.sum() for i, out in enumerate(outs, start=1)).backward()
    grad, x.grad = x.grad, None
    return [out.detach() for out in outs], grad


def test_relu_dropout_is_dropout_of_relu_with_a_smaller_backward():
    x = torch.randn(257, 33, dtype=torch.float32)
    x[0, :5] = 0.0  # relu's kink: gradient 0, as torch.relu's
    for p in (0.1, 0.5):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        torch.manual_seed(7)
        fused = relu_dropout(a, p)
        torch.manual_seed(7)
        plain = dropout(torch.relu(b), p)
        torch.testing.assert_close(fused, plain, rtol=0, atol=0)
        weights = torch.randn_like(x)
        (fused * weights).sum().backward()
        (plain * weights).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
        assert fused.grad_fn.name().endswith("_ReluDropoutBackward")
    assert (a.grad[0, :5] == 0).all()
    torch.testing.assert_close(relu_dropout(x, 0.3, training=False), torch.relu(x))
    torch.testing.assert_close(relu_dropout(x, 0.0), torch.relu(x))


def _compiled_draws_like_eager(backend: str) -> None:
    x = torch.randn(64, 48, requires_grad=True)
    compiled = torch.compile(_two_of_one_and_relu, backend=backend, fullgraph=True)
    before = int(layers.COMPILED_MASK_DRAWS)
    for seed in (0, 1):
        got, got_grad = _values_and_gradient(compiled, x, seed)
        want, want_grad = _values_and_gradient(_two_of_one_and_relu, x, seed)
        for g, w in zip(got[:3], want[:3], strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        # the residual: exact under aot_eager (the same addcmul); inductor's generated sum may
        # round x + h * mask differently (one unit in the last place), with the same mask
        exact = backend == "aot_eager"
        torch.testing.assert_close(got[3], want[3], rtol=0 if exact else 1e-6, atol=0)
        torch.testing.assert_close(got_grad, want_grad)
        assert not torch.equal(got[0] == 0, got[1] == 0)  # two calls, two masks
    assert int(layers.COMPILED_MASK_DRAWS) - before == 8  # the compiled code drew each mask


def test_compiled_dropout_draws_the_eager_masks_one_per_call():
    _compiled_draws_like_eager("aot_eager")


@pytest.mark.slow
def test_inductor_dropout_draws_the_eager_masks_one_per_call():
    _compiled_draws_like_eager("inductor")


def test_eval_and_zero_rate_trace_no_mask():
    x = torch.randn(8, 8)
    compiled = torch.compile(lambda t: dropout(t, 0.1, training=False), backend="aot_eager")
    before = int(layers.COMPILED_MASK_DRAWS)
    torch.testing.assert_close(compiled(x), x)
    assert int(layers.COMPILED_MASK_DRAWS) == before
