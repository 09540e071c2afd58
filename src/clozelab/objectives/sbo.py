"""Span boundary objective (SpanBERT, SPECS §9).

Every token of a masked span is predicted from the two tokens just outside the span and its
position inside the span:

    h0 = [x_{s-1}; x_{e+1}; P[i]]                          (2H + 200)
    h1 = LayerNorm(GeLU(W1 h0 + b1))                       (H)
    y  = LayerNorm(GeLU(W2 h1 + b2))                       (H, or E with factorized embeddings)
    logits = y E^T + b_sbo                                 (decoder tied to the input embeddings)

with P a learned table of ``max_targets`` (15) x ``position_size`` (200) rows indexed by the
relative position i = 0..14 in the span. A span keeps at most its first 15 tokens. Spans come from
the corruption's ``span_bounds`` [B, S, 2] (inclusive first/last position, -1 padding); the targets
are the span's original tokens (``mlm_labels``; a span token the corruption does not predict gets no
target). A span whose boundary x_{s-1} or x_{e+1} is not a real token of the text (it would be
[CLS], [SEP], padding or outside the sequence: the span touches the edge of its segment) gets no
target, as in SpanBERT, whose single-segment blocks skip spans at either block end.

Loss (SpanBERT's criterion): ``sum CE / (n_targets + 1)``; the total adds ``weight`` times it
(``pair_loss_weight``: 1.0 in the paper run).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from clozelab.core.batch import IGNORE_INDEX
from clozelab.core.errors import config_error
from clozelab.model.layers import get_activation, init_bert_weights
from clozelab.model.lookup import Lookup
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean
from clozelab.objectives.mlm import tied_decoder_cross_entropy


class SBO(Objective):
    """Span boundary objective; reads ``span_bounds``, ``mlm_labels`` and the special-token mask.

    Args:
        hidden_size: encoder width H.
        vocab_size: rows of the embedding table the decoder is tied to.
        max_targets: tokens predicted per span at most (SpanBERT ``max_pair_targets``: 15).
        position_size: width of the relative-position table (SpanBERT: 200).
        activation: activation of both layers (SpanBERT: erf GeLU).
        layer_norm_eps: LayerNorm epsilon (1e-12).
        weight: factor of this loss in the total loss (paper run: 1.0).
        embedding_size: width E of the tied embedding table when it differs from H.
        initializer_range: std of the normal initialisation (BERT: 0.02).
    """

    name = "sbo"
    requires = ("span_bounds", "mlm_labels", "special_tokens_mask")
    instance_kinds = None
    requires_fix = (
        "use a span-producing corruption (corruption=span, the SpanBERT recipe; or whole_word, "
        "entity, phrase, ngram); token masking (corruption=mask) has no spans"
    )

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        max_targets: int = 15,
        position_size: int = 200,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        weight: float = 1.0,
        embedding_size: int | None = None,
        initializer_range: float = 0.02,
    ):
        super().__init__(weight=weight)
        if max_targets < 1:
            raise config_error(
                "objective.sbo.max_targets", max_targets, "must be >= 1", "use 15 (SpanBERT)"
            )
        out_size = hidden_size if embedding_size is None else embedding_size
        self.hidden_size, self.vocab_size, self.max_targets = hidden_size, vocab_size, max_targets
        self.act = get_activation(activation, "objective.sbo.activation")
        self.position_embeddings = Lookup(max_targets, position_size)  # P: (15, 200)
        self.dense1 = nn.Linear(2 * hidden_size + position_size, hidden_size)
        self.norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dense2 = nn.Linear(hidden_size, out_size)
        self.norm2 = nn.LayerNorm(out_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))  # (V,), its own decoder bias
        init_bert_weights(self, std=initializer_range)

    def head(self, left: Tensor, right: Tensor, relative: Tensor) -> Tensor:
        """y for boundary states left/right (N, H) and relative positions (N,): (N, H or E)."""
        h0 = torch.cat([left, right, self.position_embeddings(relative)], dim=-1)  # (N, 2H+200)
        h1 = self.norm1(self.act(self.dense1(h0)))  # (N, H)
        return self.norm2(self.act(self.dense2(h1)))  # (N, out)

    def targets(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
        """``(row, left, right, relative, target)``, each (N,): one per predicted span token."""
        bounds = batch["span_bounds"]  # (B, S, 2)
        labels = batch["mlm_labels"]  # (B, T)
        width = labels.shape[1]
        real = ~batch["special_tokens_mask"].bool()  # (B, T)
        if "attention_mask" in batch:
            real &= batch["attention_mask"].bool()
        first, last = bounds[..., 0], bounds[..., 1]  # (B, S)
        left, right = first - 1, last + 1
        inside = (first >= 0) & (left >= 0) & (right < width)
        rows = torch.arange(bounds.shape[0], device=bounds.device)[:, None].expand_as(first)
        ok = inside & real[rows, left.clamp(0, width - 1)] & real[rows, right.clamp(0, width - 1)]
        rel = torch.arange(self.max_targets, device=bounds.device)  # (K,)
        pos = first[..., None] + rel  # (B, S, K)
        slot = ok[..., None] & (pos <= last[..., None])  # (B, S, K)
        target = labels[rows[..., None], pos.clamp(0, width - 1)]  # (B, S, K)
        slot &= target != IGNORE_INDEX
        b, s, k = slot.nonzero(as_tuple=True)
        return b, left[b, s], right[b, s], k, target[b, s, k]

    def forward(
        self, encoder_output, batch: Mapping[str, Tensor], embedding: nn.Module
    ) -> ObjectiveOutput:
        self.check_batch(batch)
        hidden = encoder_output.last_hidden_state  # (B, T, H)
        row, left, right, rel, target = self.targets(batch)  # (N,) each
        n = target.numel()
        y = self.head(hidden[row, left], hidden[row, right], rel)  # (N, out)
        weight = embedding.word_embeddings.weight  # (V, out), tied
        if weight.shape[0] != self.vocab_size:
            raise config_error(
                "objective.sbo.vocab_size",
                self.vocab_size,
                f"the tied embedding table has {weight.shape[0]} rows",
                "build the SBO head and the embedding with the same vocab_size",
            )
        loss_sum, correct = tied_decoder_cross_entropy(y, weight, self.bias, target)
        loss = global_mean(loss_sum / (n + 1), n, offset=1)
        acc = correct.float() / max(n, 1)
        return ObjectiveOutput(
            loss=loss,
            n_targets=n,
            logs={"sbo_loss": loss.detach(), "sbo_acc": acc},
            weights={"sbo_loss": n + 1},  # SpanBERT's sum CE / (n + 1)
        )
