"""``Lookup``: ``nn.Embedding`` whose compiled backward is PyTorch's deterministic CPU kernel.

Inductor decomposes an embedding's backward into an accumulating scatter whose CPU code adds the
rows of repeated ids from several threads in whatever order they finish: two compiled runs
with one seed then differ in every weight (~1e-7 after 10 steps of a tiny BERT on 2 threads),
and a compiled run cannot resume bitwise. Under ``torch.compile`` a ``Lookup`` calls the opaque
operators ``clozelab::embedding_lookup`` (forward) and ``clozelab::embedding_lookup_backward``
(ATen's ``embedding_dense_backward``: each thread owns a range of table rows and adds the ids
in order). Eager code is ``nn.Embedding``'s own. Parameters and ``state_dict`` keys are
``nn.Embedding``'s (``weight``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.library.custom_op("clozelab::embedding_lookup", mutates_args=())
def _lookup(weight: Tensor, ids: Tensor, padding_idx: int) -> Tensor:
    return F.embedding(ids, weight, padding_idx if padding_idx >= 0 else None)


@_lookup.register_fake
def _(weight: Tensor, ids: Tensor, padding_idx: int) -> Tensor:
    return weight.new_empty((*ids.shape, weight.shape[1]))


@torch.library.custom_op("clozelab::embedding_lookup_backward", mutates_args=())
def _lookup_backward(grad: Tensor, ids: Tensor, num_weights: int, padding_idx: int) -> Tensor:
    return torch.ops.aten.embedding_dense_backward(grad, ids, num_weights, padding_idx, False)


@_lookup_backward.register_fake
def _(grad: Tensor, ids: Tensor, num_weights: int, padding_idx: int) -> Tensor:
    return grad.new_empty((num_weights, grad.shape[-1]))


def _setup(ctx, inputs, output) -> None:
    weight, ids, padding_idx = inputs
    ctx.save_for_backward(ids)
    ctx.num_weights, ctx.padding_idx = weight.shape[0], padding_idx


def _backward(ctx, grad: Tensor):
    (ids,) = ctx.saved_tensors
    return _lookup_backward(grad, ids, ctx.num_weights, ctx.padding_idx), None, None


_lookup.register_autograd(_backward, setup_context=_setup)


class Lookup(nn.Embedding):
    """``nn.Embedding`` (same arguments, parameters and eager computation) whose compiled
    backward is deterministic on CPU (module docstring)."""

    def forward(self, ids: Tensor) -> Tensor:
        plain = self.max_norm is not None or self.scale_grad_by_freq or self.sparse
        if not torch.compiler.is_compiling() or plain or self.weight.device.type != "cpu":
            return super().forward(ids)
        padding = -1 if self.padding_idx is None else self.padding_idx
        return _lookup(self.weight, ids, padding)


__all__ = ["Lookup"]
