"""Span-classification NER (Lee et al. 2017, "End-to-end Neural Coreference Resolution"; SpanBERT,
Joshi et al. 2020): every span of up to ``max_span_length`` words is represented as
``[s_i; e_j; g_ij]`` and classified into an entity type or ``none`` (label 0).

- ``s_i`` / ``e_j``: ``FFN_start(h_i)`` / ``FFN_end(h_j)`` of the encoder state at the first
  subword of the span's first word / the last subword of its last word (``endpoints=ffn``, the
  seeds' and the default: Linear -> GELU -> Linear, H wide), or single linear projections
  (``endpoints=linear``).
- ``g_ij``: a self-attention-pooled summary of the span's tokens, ``sum_t softmax(a)_t h_t`` with
  a learned score ``a_t = w . h_t`` per token and the softmax taken within the span
  (``pooling=attention``, Lee et al.'s and the default), or their plain average
  (``pooling=mean``).

The loss is a cross-entropy per span, so nested and overlapping gold entities are fine. Decoding
keeps every span whose argmax is not ``none`` (``nested``), or resolves overlaps greedily by score
(``flat``: the best-scoring span first, then every span that overlaps no kept one).

Spans are enumerated with tensors (no Python loop per span): slot ``n = i * K + k`` is the span of
words ``i .. i + k``. Shapes: B batch, T tokens, W words, K max span length, N = W * K slots,
H hidden, L labels (types + 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.core.errors import config_error

NONE_LABEL = "none"  # label 0: not an entity
DECODINGS = ("nested", "flat")


def _ffn(hidden: int) -> nn.Module:
    """FFN(x) = W_2 GELU(W_1 x + b_1) + b_2, H -> H -> H."""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))


#: ``task.span_endpoints``: how ``s_i`` / ``e_j`` are computed from the endpoint states.
ENDPOINTS = {"ffn": _ffn, "linear": lambda hidden: nn.Linear(hidden, hidden)}


class AttentionPool(nn.Module):
    """``g = sum_t softmax_t(w . h_t) h_t`` over the tokens ``inside`` each span."""

    def __init__(self, hidden: int):
        super().__init__()
        self.score = nn.Linear(hidden, 1)

    def weights(self, h: Tensor, inside: Tensor) -> Tensor:
        """``(B, N, T)`` pooling weights of every slot (zero outside its span)."""
        scores = self.score(h).squeeze(-1)  # (B, T)
        neg = torch.finfo(scores.dtype).min
        return scores[:, None, :].masked_fill(~inside, neg).softmax(-1) * inside


class MeanPool(nn.Module):
    """``g = mean_t h_t`` over the tokens ``inside`` each span (no parameters)."""

    def __init__(self, hidden: int):
        super().__init__()

    def weights(self, h: Tensor, inside: Tensor) -> Tensor:
        inside = inside.to(h.dtype)
        return inside / inside.sum(-1, keepdim=True).clamp(min=1)


#: ``task.span_pooling``: how ``g_ij`` summarises the span's tokens.
POOLINGS = {"attention": AttentionPool, "mean": MeanPool}


def enumerate_spans(word_mask: Tensor, max_span_length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Every span slot of ``word_mask`` [B, W]: first word [N], last word (inclusive) [N], and
    ``valid`` [B, N], true when every word of the span is a real word (no padding, inside W).
    A sentence of ``n`` words has ``sum_{l=1..min(K, n)} (n - l + 1)`` valid spans."""
    w = word_mask.shape[1]
    k = max_span_length
    device = word_mask.device
    starts = torch.arange(w, device=device).repeat_interleave(k)  # (N,)
    widths = torch.arange(k, device=device).repeat(w)  # (N,)
    ends = starts + widths
    inside = ends < w
    ends = ends.clamp(max=w - 1)
    real = word_mask.bool().long()
    cum = real.cumsum(1)  # real words among 0..j
    count = cum[:, ends] - cum[:, starts] + real[:, starts]  # (B, N) real words in i..j
    valid = inside[None, :] & (count == (widths + 1)[None, :])
    return starts, ends, valid


def span_targets(gold: Tensor, valid: Tensor, max_span_length: int) -> Tensor:
    """Dense labels [B, N] from ``gold`` [B, G, 3] rows of (first word, last word, label), -1
    padded: 0 (none) on every other valid span, -100 on invalid slots (ignored by the loss)."""
    b, n = valid.shape
    k = max_span_length
    targets = torch.zeros((b, n), dtype=torch.long, device=valid.device)
    start, end, label = gold.unbind(-1)
    width = end - start
    ok = (start >= 0) & (width >= 0) & (width < k) & (end < n // k)
    rows = torch.arange(b, device=gold.device)[:, None].expand_as(start)
    targets[rows[ok], (start * k + width)[ok]] = label[ok]
    return targets.masked_fill(~valid, -100)


class SpanHead(nn.Module):
    """``[s_i; e_j; g_ij]`` span representations and a two-layer classifier over them.

    Args:
        hidden: encoder width H.
        num_labels: entity types + 1 (label 0 is ``none``).
        max_span_length: K, the longest span in words.
        dropout: dropout on the span representation and inside the classifier.
        decoding: ``nested`` (every non-none span) or ``flat`` (greedy, no overlaps).
        endpoints: ``ffn`` (``FFN_start`` / ``FFN_end``, default) or ``linear``.
        pooling: ``attention`` (default) or ``mean`` for ``g_ij``.
    """

    def __init__(
        self,
        hidden: int,
        num_labels: int,
        max_span_length: int = 8,
        dropout: float = 0.1,
        decoding: str = "nested",
        endpoints: str = "ffn",
        pooling: str = "attention",
    ):
        super().__init__()
        if endpoints not in ENDPOINTS:
            raise config_error(
                "task.span_endpoints", endpoints, "unknown", f"use one of {list(ENDPOINTS)}"
            )
        if pooling not in POOLINGS:
            raise config_error(
                "task.span_pooling", pooling, "unknown", f"use one of {list(POOLINGS)}"
            )
        if int(max_span_length) < 1:
            raise config_error(
                "task.max_span_length", max_span_length, "must be at least 1", "use e.g. 8"
            )
        if decoding not in DECODINGS:
            raise config_error("task.decoding", decoding, "unknown decoding", f"use {DECODINGS}")
        self.max_span_length = int(max_span_length)
        self.decoding = decoding
        self.start = ENDPOINTS[endpoints](hidden)
        self.end = ENDPOINTS[endpoints](hidden)
        self.pool = POOLINGS[pooling](hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Sequential(
            nn.Linear(3 * hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_labels),
        )

    def represent(
        self,
        h: Tensor,
        word_starts: Tensor,
        word_ends: Tensor,
        word_mask: Tensor,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``[s_i; e_j; g_ij]`` [B, N, 3H] for every slot, with the slots' first / last words and
        ``valid`` as ``enumerate_spans``. ``word_starts`` / ``word_ends`` [B, W] hold the token
        positions of each word's first / last subword."""
        starts, ends, valid = enumerate_spans(word_mask, self.max_span_length)
        first = word_starts[:, starts]  # (B, N) token of s_i
        last = word_ends[:, ends]  # (B, N) token of e_j
        hid = h.shape[-1]
        s = self.start(h).gather(1, first[..., None].expand(-1, -1, hid))  # (B, N, H)
        e = self.end(h).gather(1, last[..., None].expand(-1, -1, hid))  # (B, N, H)
        t = torch.arange(h.shape[1], device=h.device)
        inside = (t >= first[..., None]) & (t <= last[..., None]) & valid[..., None]  # (B, N, T)
        if attention_mask is not None:
            inside &= attention_mask.bool()[:, None, :]
        weights = self.pool.weights(h, inside)  # (B, N, T)
        g = torch.bmm(weights.to(h.dtype), h)  # (B, N, H)
        return torch.cat([s, e, g], -1), starts, ends, valid

    def forward(self, h: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        rep, starts, ends, valid = self.represent(
            h,
            batch["word_starts"],
            batch["word_ends"],
            batch["word_mask"],
            batch.get("attention_mask"),
        )
        logits = self.classifier(self.dropout(rep))  # (B, N, L)
        out = {"span_logits": logits, "span_mask": valid, "span_starts": starts, "span_ends": ends}
        if "span_gold" in batch:
            targets = span_targets(batch["span_gold"], valid, self.max_span_length)
            if bool(valid.any()):
                flat = logits.reshape(-1, logits.shape[-1])
                out["loss"] = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-100)
            else:  # only empty sentences: nothing to learn from
                out["loss"] = logits.sum() * 0.0
        return out

    @torch.no_grad()
    def decode(self, out: dict[str, Tensor]) -> list[list[tuple[int, int, int, float]]]:
        """Per row, the predicted entities ``(start, end_exclusive, label, probability)`` in word
        units, sorted by position."""
        probs = out["span_logits"].float().softmax(-1)
        score, label = probs.max(-1)  # (B, N)
        keep = out["span_mask"] & (label != 0)
        starts, ends = out["span_starts"].tolist(), out["span_ends"].tolist()
        rows = []
        for row in range(keep.shape[0]):
            slots = keep[row].nonzero().squeeze(-1).tolist()
            found = [
                (starts[n], ends[n] + 1, int(label[row, n]), float(score[row, n])) for n in slots
            ]
            rows.append(sorted(greedy_flat(found) if self.decoding == "flat" else found))
        return rows


def greedy_flat(spans: list[tuple[int, int, int, float]]) -> list[tuple[int, int, int, float]]:
    """The non-overlapping subset picked greedily by score (ties: the earlier, shorter span)."""
    kept: list[tuple[int, int, int, float]] = []
    for span in sorted(spans, key=lambda x: (-x[3], x[0], x[1])):
        if all(span[1] <= k[0] or k[1] <= span[0] for k in kept):
            kept.append(span)
    return kept
