"""Unpadding (``encoder.unpad=true``): the dense parts of each layer run on real tokens only.

A padded batch [B, T, H] with N real tokens is packed into [N, H] once, before the first layer;
the QKV and output projections, the feed-forward block, the residuals, dropout and LayerNorms
then run on N rows instead of B*T. Attention, the only part that mixes positions, runs either

- ``padded``: on the padded layout: the packed QKV rows are scattered into a zero [B, T, 3H]
  tensor, SDPA runs with the padding mask, and the real rows are gathered back; or
- ``nested``: on jagged nested tensors (one variable-length sequence per row, no mask), which
  CUDA runs on the flash / memory-efficient variable-length kernels. On CPU PyTorch runs nested
  SDPA one sequence at a time, about 10x slower than ``padded``: use it on GPUs.

The last layer's output is scattered back to [B, T, H]; padding positions hold zeros (the padded
path leaves values there that no loss or head reads). At real positions both paths compute the
same numbers as the padded encoder, up to float rounding.

Shape legend: B batch, T sequence length, N real tokens in the batch, C channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from clozelab.core.errors import config_error

UNPAD_ATTENTION = ("padded", "nested")


def check_unpad_attention(name: str, causal: bool = False) -> str:
    if name not in UNPAD_ATTENTION:
        raise config_error(
            "encoder.unpad_attention",
            name,
            "unknown attention layout",
            f"use one of {list(UNPAD_ATTENTION)}",
        )
    if causal and name == "nested":
        raise config_error(
            "encoder.unpad_attention",
            name,
            "the causal encoder needs its [T, T] mask; nested inputs take none",
            "use encoder.unpad_attention=padded",
        )
    return name


@dataclass
class Packing:
    """Where the N real tokens of a padded [B, T] batch sit.

    Attributes:
        indices: (N,) flat positions (b * T + t) of the real tokens, row by row.
        batch, length: B and T.
        offsets: (B + 1,) start of each row's tokens in the packed order (nested layout only).
    """

    indices: Tensor
    batch: int
    length: int
    offsets: Tensor | None = None

    @classmethod
    def from_mask(cls, keep: Tensor, nested: bool = False) -> Packing:
        """From a [B, T] boolean mask (True = real token)."""
        batch, length = keep.shape
        indices = keep.reshape(-1).nonzero().squeeze(1)  # (N,)
        offsets = None
        if nested:
            counts = keep.sum(1)  # (B,)
            offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])  # (B + 1,)
        return cls(indices, batch, length, offsets)

    def pack(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (N, C): the real rows."""
        return x.reshape(self.batch * self.length, -1).index_select(0, self.indices)

    def unpack(self, x: Tensor) -> Tensor:
        """(N, C) -> (B, T, C), zeros at padding."""
        flat = x.new_zeros(self.batch * self.length, x.shape[-1])  # (B*T, C)
        return flat.index_copy(0, self.indices, x).view(self.batch, self.length, -1)

    def nested(self, x: Tensor) -> Tensor:
        """(N, heads, hs) -> jagged (B, heads, j, hs), the layout nested SDPA takes."""
        return torch.nested.nested_tensor_from_jagged(x.contiguous(), self.offsets).transpose(1, 2)


__all__ = ["UNPAD_ATTENTION", "Packing", "check_unpad_attention"]
