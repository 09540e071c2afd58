"""Token labelling (CoNLL NER): a tag per word, from the first subword of each word (BERT) or from
all of its subwords, by a softmax or a linear-chain CRF (negative log-likelihood by the forward
algorithm, Viterbi decoding); scored by entity-level F1.

Shapes: B batch, T tokens, W words, H hidden, L labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.layers import init_bert_weights
from clozelab.tasks.backbone import Backbone
from clozelab.tasks.base import Task, TaskData
from clozelab.tasks.features import encode_tokens
from clozelab.tasks.heads import TaskModel
from clozelab.tasks.metrics import entity_f1
from clozelab.tasks.readers import iter_tags

SUBWORD_LABELS = ("first", "all")  # token labelling: the first subword, or every subword
SUBWORD_DECODING = ("first", "mean")  # from the first subword, or all of a word's subwords


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


class TokenModel(TaskModel):
    """The backbone and a linear layer to ``num_labels`` tags per word (softmax or CRF).

    Args:
        backbone, mode, mix_layers, layer_mix, dropout: see ``TaskModel``.
        num_labels: the tags.
        decoder: ``softmax`` or ``crf``.
        subword_labels: ``first`` (only a word's first subword carries its label, BERT's NER)
            or ``all`` (every subword carries its word's label; softmax only).
        subword_decoding: ``first`` (a word takes the prediction of its first subword) or
            ``mean`` (the average of its subwords' label distributions; with a CRF, the average
            of their emission scores, then Viterbi over words).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_labels: int,
        *,
        decoder: str = "softmax",
        subword_labels: str = "first",
        subword_decoding: str = "first",
        **body,
    ):
        if decoder not in ("softmax", "crf"):
            raise config_error("task.decoder", decoder, "unknown decoder", "use softmax or crf")
        if subword_labels not in SUBWORD_LABELS:
            raise config_error(
                "task.subword_labels", subword_labels, "unknown", f"use one of {SUBWORD_LABELS}"
            )
        if subword_decoding not in SUBWORD_DECODING:
            raise config_error(
                "task.subword_decoding",
                subword_decoding,
                "unknown",
                f"use one of {SUBWORD_DECODING}",
            )
        if decoder == "crf" and subword_labels == "all":
            raise config_error(
                "task.subword_labels",
                subword_labels,
                "a CRF scores word sequences, so only the first subword can carry the label",
                "set task.subword_labels=first, or task.decoder=softmax",
            )
        super().__init__(backbone, **body)
        self.subword_labels, self.subword_decoding = subword_labels, subword_decoding
        self.decoder = decoder
        self.output = nn.Linear(backbone.hidden_size, num_labels)
        init_bert_weights(self.output)
        self.crf = CRF(num_labels) if decoder == "crf" else None

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Token labelling: word emissions at the first subwords, plus, for ``subword_labels=all``
        / ``subword_decoding=mean``, every token's emissions and the words' combined scores."""
        h = self.hidden(batch)
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


class TokenTask(Task):
    """A tag per word (CoNLL NER: first-subword labels, softmax or CRF; entity-level F1)."""

    kind = "token"
    default_metrics = ("entity_f1",)

    def encode(self, splits, backbone) -> TaskData:
        if self.cfg.get("labels"):
            labels = [str(x) for x in self.cfg.labels]
        else:
            labels = sorted(set(iter_tags(splits["train"])) | {"O"})
        labels = ["O", *[t for t in labels if t != "O"]]
        index = {t: i for i, t in enumerate(labels)}
        length = self.max_length(backbone)
        linker = self.entity_linker(backbone)  # ERNIE-THU: entity inputs where text has mentions
        train = encode_tokens(backbone.tokenizer, splits["train"], length, index, linker)
        validation = encode_tokens(backbone.tokenizer, splits["validation"], length, index, linker)
        return TaskData(train, validation, len(labels), labels, splits["validation"])

    def build_model(self, backbone, data, *, mode, mix_layers, layer_mix) -> nn.Module:
        task = self.cfg
        return TokenModel(
            backbone,
            data.num_labels,
            decoder=task.get("decoder", "softmax"),
            subword_labels=task.get("subword_labels", "first"),
            subword_decoding=task.get("subword_decoding", "first"),
            **self.body(mode, mix_layers, layer_mix),
        )

    def score(self, model, data, outputs, names) -> dict:
        pred_tags: list[list[str]] = [[] for _ in data.validation]
        for idx, batch, out in outputs:
            for row, tags in zip(idx, model.predict_tags(out, batch["word_mask"]), strict=True):
                n_words = data.validation[row]["n_words"]
                words = [data.labels[t] for t in tags][:n_words]
                pred_tags[row] = words + ["O"] * (n_words - len(words))  # cut words: "O"
        gold = [e.tags for e in data.examples]
        scores = entity_f1(gold, pred_tags)
        return {k: v for k, v in scores.items() if k in names or k == "entity_f1"}

    def protocol(self, mode: str) -> dict:
        task = self.cfg
        return {
            "decoder": task.get("decoder"),
            "subword_labels": task.get("subword_labels", "first"),
            "subword_decoding": task.get("subword_decoding", "first"),
        }
