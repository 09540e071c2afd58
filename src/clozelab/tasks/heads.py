"""Task heads on top of a ``Backbone`` and the model that joins them.

- feature-based use (``mode=features``): a frozen encoder whose last ``k`` layers are combined by
  ``layer_mix`` (``model/layer_pool.py``): their fixed average (``average``, the seeds' recipe) or
  a learned ELMo scalar mix (``learned``, initialised to the average).
- ``CRF``: a linear-chain CRF (negative log-likelihood by the forward algorithm, Viterbi decoding).
- ``TaskModel``: backbone (fine-tuned, or frozen + scalar mix) with one head per task kind:
  ``classification`` / ``regression`` on a pooled vector (``pooling``: the [CLS] vector through the
  pooler, BERT; or the mean of the token vectors through a fresh pooler), ``token`` labels on the
  first subword of each word (softmax or CRF), ``qa`` start/end pointers restricted to passage
  tokens, ``span_ner`` span classification (``tasks/spans.py``).

Shapes: B batch, T tokens, W words, H hidden, L labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.layer_pool import layer_mix as build_layer_mix
from clozelab.model.layers import Pooler, init_bert_weights
from clozelab.tasks.backbone import Backbone
from clozelab.tasks.spans import SpanHead

KINDS = ("classification", "regression", "token", "qa", "span_ner")
SUBWORD_LABELS = ("first", "all")  # token labelling: the first subword, or every subword
SUBWORD_DECODING = ("first", "mean")  # from the first subword, or all of a word's subwords
MODES = ("finetune", "features")
POOLINGS = ("cls", "mean", "last")


def resolve_pooling(pooling: str | None, mode: str, summary: str = "cls") -> str:
    """``task.pooling`` in effect: null is the backbone's ``summary`` token when fine-tuning
    (``cls`` for BERT-style encoders, ``last`` for XLNet), ``mean`` for features."""
    pooling = pooling or ("mean" if mode == "features" else summary)
    if pooling not in POOLINGS:
        raise config_error(
            "task.pooling", pooling, "unknown pooling", f"use one of {POOLINGS} or null"
        )
    return pooling


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``h`` (B, T, H) over the positions where ``mask`` (B, T) is set -> (B, H)."""
    m = mask[..., None].to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


def combine_subwords(
    tokens: Tensor, token_words: Tensor, starts: Tensor, log_probs: bool = True
) -> Tensor:
    """Per word, the average over its subwords of their label distributions (``log_probs``:
    returned as log-probabilities) or of their raw emission scores: ``(B, T, L) -> (B, W, L)``.

    ``token_words`` (B, T) names each token's word (-1: none); a word without tokens of its own
    keeps the scores of its first-subword position ``starts``.
    """
    values = tokens.softmax(-1) if log_probs else tokens
    b, _, labels = tokens.shape
    w = starts.shape[1]
    index = token_words.clamp(min=0)[..., None].expand(-1, -1, labels)
    real = (token_words >= 0)[..., None].to(values.dtype)
    sums = values.new_zeros(b, w, labels).scatter_add_(1, index, values * real)
    counts = values.new_zeros(b, w).scatter_add_(1, token_words.clamp(min=0), real[..., 0])
    first = values.gather(1, starts[..., None].expand(-1, -1, labels))
    mean = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], first)
    return mean.clamp_min(1e-30).log() if log_probs else mean


class CRF(nn.Module):
    """Linear-chain CRF over ``num_tags`` tags; sequences are left-aligned under ``mask``."""

    def __init__(self, num_tags: int):
        super().__init__()
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))  # [from, to]
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Mean negative log-likelihood of ``tags`` [B, W] given ``emissions`` [B, W, L]."""
        mask = mask.bool()
        keep = mask.any(1)
        emissions, tags, mask = emissions[keep], tags[keep].clamp(min=0), mask[keep]
        if emissions.shape[0] == 0:
            return emissions.sum() * 0.0
        b = torch.arange(emissions.shape[0])
        score = self.start[tags[:, 0]] + emissions[b, 0, tags[:, 0]]
        for i in range(1, emissions.shape[1]):
            step = self.transitions[tags[:, i - 1], tags[:, i]] + emissions[b, i, tags[:, i]]
            score = score + step * mask[:, i]
        last = tags[b, mask.sum(1) - 1]
        score = score + self.end[last]
        return (self._log_partition(emissions, mask) - score).mean()

    def _log_partition(self, emissions: Tensor, mask: Tensor) -> Tensor:
        alpha = self.start + emissions[:, 0]  # (B, L)
        for i in range(1, emissions.shape[1]):
            nxt = torch.logsumexp(
                alpha[:, :, None] + self.transitions[None] + emissions[:, i, None, :], dim=1
            )
            alpha = torch.where(mask[:, i, None], nxt, alpha)
        return torch.logsumexp(alpha + self.end, dim=1)

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor) -> list[list[int]]:
        """The most likely tag sequence of each row (Viterbi), as long as its mask."""
        mask = mask.bool()
        lengths = mask.sum(1).tolist()
        score = self.start + emissions[:, 0]
        back = []
        for i in range(1, emissions.shape[1]):
            total = score[:, :, None] + self.transitions[None]  # (B, from, to)
            best, index = total.max(1)
            nxt = best + emissions[:, i]
            score = torch.where(mask[:, i, None], nxt, score)
            back.append(index)
        score = score + self.end
        out = []
        for row, n in enumerate(lengths):
            if n == 0:
                out.append([])
                continue
            tag = int(score[row].argmax())
            path = [tag]
            for i in range(n - 1, 0, -1):
                tag = int(back[i - 1][row, tag])
                path.append(tag)
            out.append(path[::-1])
        return out


class TaskModel(nn.Module):
    """A backbone and the head of one task kind.

    Args:
        backbone: the pre-trained (or random) body.
        kind: classification | regression | token | qa | span_ner.
        num_labels: classes (classification), tags (token), types + 1 (span_ner); ignored
            otherwise.
        mode: ``finetune`` trains everything; ``features`` freezes the backbone and feeds its
            last ``mix_layers`` hidden states, combined by ``layer_mix``, to the head.
        layer_mix: ``average`` (fixed average, the seeds' feature-based recipe) or ``learned``
            (ELMo's softmax-weighted scalar mix with a scale).
        decoder: ``softmax`` or ``crf`` (token labelling).
        subword_labels: token labelling: ``first`` (only a word's first subword carries its
            label, BERT's NER) or ``all`` (every subword carries its word's label; softmax only).
        subword_decoding: token labelling: ``first`` (a word takes the prediction of its first
            subword) or ``mean`` (the average of its subwords' label distributions; with a CRF,
            the average of their emission scores, then Viterbi over words).
        dropout: dropout before the output layer.
        max_span_length, span_decoding, span_endpoints, span_pooling: span_ner only (see
            ``SpanHead``: decoding, endpoints ffn | linear, pooling attention | mean).
        pooling: classification / regression only: ``cls`` (the [CLS] vector through the
            pooler, pre-trained when the checkpoint has one), ``mean`` (the mean of the
            non-padding token vectors through a fresh pooler) or ``last`` (the last real token
            through a fresh dense + tanh: XLNet's sequence summary); ``None``: the backbone's
            summary token (``cls``; ``last`` for XLNet) when fine-tuning, ``mean`` for frozen
            features.
    """

    def __init__(
        self,
        backbone: Backbone,
        kind: str,
        num_labels: int = 2,
        mode: str = "finetune",
        mix_layers: int = 4,
        layer_mix: str = "average",
        decoder: str = "softmax",
        subword_labels: str = "first",
        subword_decoding: str = "first",
        dropout: float = 0.1,
        max_span_length: int = 8,
        span_decoding: str = "nested",
        span_endpoints: str = "ffn",
        span_pooling: str = "attention",
        pooling: str | None = None,
    ):
        super().__init__()
        if kind not in KINDS:
            raise config_error(
                "task.kind", kind, "not a fine-tuning task kind", f"use one of {KINDS}"
            )
        if mode not in MODES:
            raise config_error("mode", mode, "unknown mode", f"use one of {MODES}")
        pooling = resolve_pooling(pooling, mode, backbone.summary_pooling)
        if decoder not in ("softmax", "crf"):
            raise config_error("task.decoder", decoder, "unknown decoder", "use softmax or crf")
        if subword_labels not in SUBWORD_LABELS:
            raise config_error(
                "task.subword_labels", subword_labels, "unknown", f"use one of {SUBWORD_LABELS}"
            )
        if subword_decoding not in SUBWORD_DECODING:
            raise config_error(
                "task.subword_decoding", subword_decoding, "unknown",
                f"use one of {SUBWORD_DECODING}",
            )  # fmt: skip
        if kind == "token" and decoder == "crf" and subword_labels == "all":
            raise config_error(
                "task.subword_labels", subword_labels,
                "a CRF scores word sequences, so only the first subword can carry the label",
                "set task.subword_labels=first, or task.decoder=softmax",
            )  # fmt: skip
        self.subword_labels, self.subword_decoding = subword_labels, subword_decoding
        self.backbone = backbone
        self.kind = kind
        self.mode = mode
        self.decoder = decoder
        self.pooling = pooling
        hidden = backbone.hidden_size
        self.mix = build_layer_mix(layer_mix, mix_layers) if mode == "features" else None
        if self.mix is not None:
            backbone.requires_grad_(False)
        self.dropout = nn.Dropout(dropout)
        self.pooler = None
        if kind in ("classification", "regression"):
            if pooling in ("mean", "last"):
                self.pooler = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
            elif backbone.pooler is None:
                self.pooler = Pooler(hidden)  # fresh: the checkpoint has no pre-trained pooler
        if kind == "span_ner":
            self.output = SpanHead(
                hidden, num_labels, max_span_length, dropout, span_decoding, span_endpoints,
                span_pooling,
            )  # fmt: skip
        else:
            out = {"classification": num_labels, "regression": 1, "token": num_labels, "qa": 2}
            self.output = nn.Linear(hidden, out[kind])
        init_bert_weights(self.output)
        if self.pooler is not None:
            init_bert_weights(self.pooler)
        self.crf = CRF(num_labels) if kind == "token" and decoder == "crf" else None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.mix is not None:
            self.backbone.eval()  # frozen features: no dropout inside the encoder
        return self

    def hidden(self, batch: dict[str, Tensor]) -> Tensor:
        args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        if self.mix is None:
            return self.backbone(*args).last_hidden_state  # (B, T, H)
        with torch.no_grad():
            states = self.backbone(*args, output_hidden_states=True).hidden_states
        return self.mix(states)

    def _pooled(self, h: Tensor, mask: Tensor) -> Tensor:
        if self.pooling == "mean":
            return self.pooler(masked_mean(h, mask))
        if self.pooling == "last":  # XLNet's summary: the last real token (its [CLS] sits last)
            last = mask.long().sum(-1).clamp_min(1) - 1  # (B,)
            return self.pooler(h[torch.arange(h.shape[0], device=h.device), last])
        pooler = self.pooler if self.pooler is not None else self.backbone.pooler
        return pooler(h)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        h = self.hidden(batch)
        if self.kind in ("classification", "regression"):
            logits = self.output(self.dropout(self._pooled(h, batch["attention_mask"])))
            out = {"logits": logits}
            if "labels" in batch:
                if self.kind == "regression":
                    out["loss"] = F.mse_loss(logits.squeeze(-1), batch["labels"].float())
                else:
                    out["loss"] = F.cross_entropy(logits, batch["labels"])
            return out
        if self.kind == "token":
            return self._token_forward(h, batch)
        if self.kind == "span_ner":
            return self.output(h, batch)
        logits = self.output(self.dropout(h))  # (B, T, 2)
        allowed = batch["context_mask"].clone()
        allowed[:, 0] = True  # [CLS]: the target of windows without the answer
        neg = torch.finfo(logits.dtype).min
        start = logits[..., 0].masked_fill(~allowed, neg)
        end = logits[..., 1].masked_fill(~allowed, neg)
        out = {"start_logits": start, "end_logits": end}
        if "start_positions" in batch:
            out["loss"] = (
                F.cross_entropy(start, batch["start_positions"])
                + F.cross_entropy(end, batch["end_positions"])
            ) / 2
        return out

    def _token_forward(self, h: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Token labelling: word emissions at the first subwords, plus, for ``subword_labels=all``
        / ``subword_decoding=mean``, every token's emissions and the words' combined scores."""
        starts = batch["word_starts"]  # (B, W)
        if self.subword_labels == "first" and self.subword_decoding == "first":
            words = h.gather(1, starts[..., None].expand(-1, -1, h.shape[-1]))  # (B, W, H)
            emissions = self.output(self.dropout(words))  # (B, W, L)
            tokens = None
        else:
            tokens = self.output(self.dropout(h))  # (B, T, L)
            emissions = tokens.gather(1, starts[..., None].expand(-1, -1, tokens.shape[-1]))
        out = {"emissions": emissions}
        if self.subword_decoding == "mean":
            out["decode_scores"] = combine_subwords(
                tokens, batch["token_words"], starts, log_probs=self.crf is None
            )
        if "word_labels" in batch:
            labels = batch["word_labels"]
            if self.crf is not None:
                out["loss"] = self.crf.nll(emissions, labels, batch["word_mask"])
            elif self.subword_labels == "all":  # every subword carries its word's label
                token_words = batch["token_words"]
                token_labels = labels.gather(1, token_words.clamp(min=0))
                token_labels = token_labels.masked_fill(token_words < 0, -100)  # (B, T)
                flat = tokens.reshape(-1, tokens.shape[-1])
                out["loss"] = F.cross_entropy(flat, token_labels.reshape(-1), ignore_index=-100)
            else:
                flat = emissions.reshape(-1, emissions.shape[-1])
                out["loss"] = F.cross_entropy(flat, labels.reshape(-1), ignore_index=-100)
        return out

    def predict_tags(self, out: dict[str, Tensor], mask: Tensor) -> list[list[int]]:
        """Word-level tag indices per row (Viterbi with a CRF, else the argmax), from the first
        subwords' emissions or, with ``subword_decoding=mean``, the words' combined scores."""
        scores = out.get("decode_scores", out["emissions"])
        if self.crf is not None:
            return self.crf.decode(scores, mask)
        best = scores.argmax(-1)
        return [best[i, : int(mask[i].sum())].tolist() for i in range(best.shape[0])]

    def predict_spans(self, out: dict[str, Tensor]) -> list[list[tuple[int, int, int, float]]]:
        """Per row, the predicted ``(start, end_exclusive, label, probability)`` word spans."""
        return self.output.decode(out)
