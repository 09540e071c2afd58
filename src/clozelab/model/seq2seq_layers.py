"""Layers of the encoder-decoder models (T5, Raffel et al. 2020; BART, Lewis et al. 2020).

- ``RMSNorm``: T5's scale-only LayerNorm (no mean, no bias), accumulated in float32.
- ``relative_position_bucket`` / ``RelativePositionBias``: T5's bucketed relative positions
  (half the buckets exact, half logarithmic up to ``max_distance``; one direction for the
  decoder), a per-head scalar added to the attention scores, shared by every layer of a stack.
- ``Attention``: multi-head attention through ``F.scaled_dot_product_attention``; self-attention
  projects query, key and value with one fused ``Linear(H, 3 inner)``, cross-attention projects
  the query from the decoder and key/value (one ``Linear(H, 2 inner)``) from the encoder output.
  ``scale`` is 1/sqrt(hs) (BART) or 1 (T5 folds it into the initialisation); ``bias`` False: T5.
- ``Block``: one layer: self-attention, optional cross-attention, feed-forward, each with dropout
  and a residual, normalised before (``norm="pre"``, T5) or after (``norm="post"``, BART);
  ``activation_dropout`` inside the feed-forward block (T5 drops its hidden layer at the model's
  dropout rate, HF ``T5DenseActDense``; BART's default is 0).

Masks: ``mask`` is what SDPA takes (None, a boolean [B, 1, 1, S] key mask, or an additive float
[B or 1, nh, T, S] with T5's position bias and padding folded in). ``causal`` without a mask
uses SDPA's causal kernel. Decoder self-attention never needs the target padding mask: targets
are right-padded, so a real position attends only to earlier, real positions.

Shape legend: B batch, T query length, S key length, H hidden size, nh heads, hs head size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.dropout import Dropout, relu_dropout
from clozelab.model.encoder import FeedForward, attention_with_cpu_dropout, split_heads
from clozelab.model.lookup import Lookup


class _RMSNormFunction(torch.autograd.Function):
    """fp32 RMSNorm with a hand-written backward, for CPU.

    ``F.rms_norm`` has no fused CPU kernel: autograd differentiates its decomposition (pow, mean,
    rsqrt and three products), about 2.5x the time of this function forward + backward at
    [32, 128, 256]. Here forward keeps ``normed = x * rstd`` and backward is
    ``grad_x = rstd * (g - normed * mean(g * normed))`` with ``g = grad * weight`` and
    ``grad_weight = sum(grad * normed)`` over the rows.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        rstd = torch.linalg.vecdot(x, x).div_(x.shape[-1]).add_(eps).rsqrt_().unsqueeze(-1)
        normed = x * rstd  # (..., H)
        ctx.save_for_backward(normed, weight, rstd)
        return normed * weight

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        normed, weight, rstd = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            g = grad * weight
            dot = torch.linalg.vecdot(g, normed).div_(-normed.shape[-1]).unsqueeze(-1)
            grad_x = torch.addcmul(g, normed, dot).mul_(rstd)
        if ctx.needs_input_grad[1]:
            grad_w = (grad * normed).reshape(-1, normed.shape[-1]).sum(0)
        return grad_x, grad_w, None


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)`` (HF ``T5LayerNorm``), statistics in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 == self.weight.dtype:
            if x.device.type == "cpu" and not torch.compiler.is_compiling():
                return _RMSNormFunction.apply(x, self.weight, self.eps)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # fused off CPU
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def relative_position_bucket(
    relative: Tensor, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
) -> Tensor:
    """T5's bucket of each relative position ``key - query`` (Mesh TensorFlow's rule).

    Bidirectional: half the buckets for keys after the query, half before. Within a half, the
    first half of the buckets are exact distances, the rest logarithmically wider bins up to
    ``max_distance``, beyond which everything shares the last bucket. Unidirectional (decoder):
    keys after the query all fall into bucket 0 (they are masked anyway).
    """
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp_min(0)
    max_exact = num_buckets // 2
    large = (
        max_exact
        + (
            torch.log(distance.float().clamp_min(1) / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    large = large.clamp_max(num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """A learned scalar per (bucket, head): the [1, nh, T, S] bias added to attention scores."""

    def __init__(
        self, num_heads: int, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
    ):
        super().__init__()
        self.bidirectional, self.num_buckets, self.max_distance = (
            bidirectional,
            num_buckets,
            max_distance,
        )
        self.embedding = Lookup(num_buckets, num_heads)

    def forward(self, query_length: int, key_length: int, offset: int = 0) -> Tensor:
        """The bias of queries at positions offset.. offset + T - 1 over keys 0..S-1 (``offset``:
        the tokens a decoder's key/value cache already holds)."""
        device = self.embedding.weight.device
        query = torch.arange(offset, offset + query_length, device=device)[:, None]  # (T, 1)
        key = torch.arange(key_length, device=device)[None, :]  # (1, S)
        bucket = relative_position_bucket(
            key - query, self.bidirectional, self.num_buckets, self.max_distance
        )  # (T, S)
        return self.embedding(bucket).permute(2, 0, 1)[None]  # (1, nh, T, S)

    def between(self, query: Tensor, key: Tensor) -> Tensor:
        """The bias between explicit positions: query [B, T], key [B, S] -> [B, nh, T, S]."""
        bucket = relative_position_bucket(
            key[:, None, :] - query[:, :, None],
            self.bidirectional,
            self.num_buckets,
            self.max_distance,
        )
        return self.embedding(bucket).permute(0, 3, 1, 2)


def future_keys(T: int, S: int, device) -> Tensor:
    """``bool [T, S]``, True where key s comes after query t, the T queries being the last T of
    the S positions (S > T while a key/value cache holds the earlier ones)."""
    return torch.ones(T, S, dtype=torch.bool, device=device).triu(1 + S - T)


def additive_mask(bias: Tensor, key_mask: Tensor | None, causal: bool) -> Tensor:
    """T5's position ``bias`` [1, nh, T, S] with padding keys (``key_mask`` [B, S], 1 = token)
    and, for ``causal``, future keys set to the dtype's minimum: one float SDPA mask."""
    mask = bias
    low = torch.finfo(bias.dtype).min
    if causal:
        T, S = bias.shape[-2:]
        mask = mask.masked_fill(future_keys(T, S, bias.device), low)
    if key_mask is not None and not bool(key_mask.all()):
        keep = key_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        mask = mask.masked_fill(~keep, low)
    return mask


def check_heads(hidden_size: int, num_heads: int, head_size: int | None) -> int:
    """The head size: ``head_size`` or hidden_size // num_heads (which must then divide)."""
    if head_size is not None:
        return int(head_size)
    if num_heads < 1 or hidden_size % num_heads:
        raise config_error(
            "model.num_heads",
            num_heads,
            f"does not divide model.hidden_size={hidden_size}",
            "choose a number of heads that divides the hidden size",
        )
    return hidden_size // num_heads


class Attention(nn.Module):
    """Multi-head self- (``cross=False``) or cross-attention (``cross=True``) through SDPA.

    Args:
        hidden_size: model width H.
        num_heads: heads nh.
        attention_dropout: dropout on the attention probabilities (training only).
        bias: projections with biases (BART) or without (T5).
        scale: score scale; None = 1/sqrt(hs) (BART), 1.0 for T5.
        cross: keys and values from ``memory`` (the encoder output) instead of ``x``.
        head_size: hs when nh * hs differs from H (T5's ``d_kv``); default H // nh.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        attention_dropout: float = 0.0,
        bias: bool = True,
        scale: float | None = None,
        cross: bool = False,
        head_size: int | None = None,
    ):
        super().__init__()
        self.num_heads, self.head_size = num_heads, check_heads(hidden_size, num_heads, head_size)
        inner = num_heads * self.head_size
        self.attention_dropout, self.scale, self.cross = attention_dropout, scale, cross
        if cross:
            self.q = nn.Linear(hidden_size, inner, bias=bias)
            self.kv = nn.Linear(hidden_size, 2 * inner, bias=bias)  # rows: [key; value]
        else:
            self.qkv = nn.Linear(hidden_size, 3 * inner, bias=bias)  # rows: [query; key; value]
        self.out = nn.Linear(inner, hidden_size, bias=bias)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        memory: Tensor | None = None,
        causal: bool = False,
        cache: dict | None = None,
    ) -> Tensor:
        """x [B, T, H] (and ``memory`` [B, S, H] for cross-attention) -> [B, T, H].

        ``cache`` (incremental decoding, a dict this layer fills): self-attention appends the new
        keys/values to the cached ones, so ``x`` holds only the new positions; cross-attention
        projects ``memory`` once and reuses it. ``causal`` then masks by position (the queries are
        the last T of the S keys)."""
        if self.cross:
            (q,) = split_heads(self.q(x), self.num_heads, self.head_size)
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]
            else:
                k, v = split_heads(self.kv(memory), self.num_heads, self.head_size)
        else:
            q, k, v = split_heads(self.qkv(x), self.num_heads, self.head_size)
            if cache is not None and "k" in cache:
                k, v = torch.cat((cache["k"], k), dim=2), torch.cat((cache["v"], v), dim=2)
        if cache is not None:
            cache["k"], cache["v"] = k, v  # (B, nh, S, hs)
        T, S = q.shape[-2], k.shape[-2]
        p = self.attention_dropout if self.training else 0.0
        cpu_dropout = p > 0.0 and x.device.type == "cpu"
        if causal and mask is None and (S != T or cpu_dropout):
            # SDPA's is_causal aligns the queries top-left; a cache (or the CPU dropout path)
            # needs an explicit mask: True = attend
            mask, causal = ~future_keys(T, S, x.device), False
        if cpu_dropout:
            y = attention_with_cpu_dropout(q, k, v, mask, p, self.scale)
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=p,
                is_causal=causal and mask is None,
                scale=self.scale,
            )
        B, T = x.shape[:2]
        return self.out(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, H)


class Block(nn.Module):
    """One transformer layer of an encoder (``cross=False``) or a decoder (``cross=True``).

    ``norm="pre"`` (T5): ``x = x + Drop(Sub(Norm(x)))`` for each sub-block; ``"post"`` (BART,
    BERT): ``x = Norm(x + Drop(Sub(x)))``. ``rms`` picks RMSNorm (T5) over LayerNorm.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation: str = "gelu",
        norm: str = "post",
        rms: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        scale: float | None = None,
        cross: bool = False,
        head_size: int | None = None,
        activation_dropout: float = 0.0,
    ):
        super().__init__()
        if norm not in ("pre", "post"):
            raise config_error("decoder.norm", norm, "unknown norm placement", "use pre or post")
        self.pre = norm == "pre"

        def make_norm() -> nn.Module:
            if rms:
                return RMSNorm(hidden_size, layer_norm_eps)
            return nn.LayerNorm(hidden_size, eps=layer_norm_eps)

        attend = dict(
            attention_dropout=attention_dropout, bias=bias, scale=scale, head_size=head_size
        )
        self.attention = Attention(hidden_size, num_heads, **attend)
        self.attention_norm = make_norm()
        if cross:
            self.cross_attention = Attention(hidden_size, num_heads, cross=True, **attend)
            self.cross_norm = make_norm()
        else:
            self.cross_attention = self.cross_norm = None
        self.feed_forward = FeedForward(hidden_size, intermediate_size, activation, bias=bias)
        self.output_norm = make_norm()
        self.dropout = Dropout(dropout)
        self.activation_dropout = Dropout(activation_dropout)  # T5: dropout_rate; BART: 0

    def _feed_forward(self, x: Tensor) -> Tensor:
        ff = self.feed_forward
        if ff.activation == "relu":  # T5: one fused relu + dropout that saves only its output
            hidden = relu_dropout(ff.fc1(x), self.activation_dropout.p, self.training)
        else:
            hidden = self.activation_dropout(ff.act(ff.fc1(x)))
        return ff.fc2(hidden)  # (B, T, I) inside

    def _residual(self, x: Tensor, norm: nn.Module, sub, *args, **kwargs) -> Tensor:
        if self.pre:
            return self.dropout.add(x, sub(norm(x), *args, **kwargs))
        return norm(self.dropout.add(x, sub(x, *args, **kwargs)))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        causal: bool = False,
        cache: dict | None = None,
    ) -> Tensor:
        """x [B, T, H]; ``memory`` [B, S, H] and its SDPA ``memory_mask`` for a decoder layer;
        ``cache``: this layer's ``{"self": {}, "cross": {}}`` of a ``DecoderCache``."""
        own = cache["self"] if cache is not None else None
        x = self._residual(x, self.attention_norm, self.attention, mask, causal=causal, cache=own)
        if self.cross_attention is not None:
            cross = cache["cross"] if cache is not None else None
            x = self._residual(
                x, self.cross_norm, self.cross_attention, memory_mask, memory, cache=cross
            )
        return self._residual(x, self.output_norm, self._feed_forward)


__all__ = [
    "Attention",
    "Block",
    "RMSNorm",
    "RelativePositionBias",
    "additive_mask",
    "check_heads",
    "future_keys",
    "relative_position_bucket",
]
