"""XLNet's permutation language modelling targets (Yang et al. 2019; SPECS §18): which tokens are
predicted, in which factorisation order, as HF's ``perm_mask`` and ``target_mapping``.

**Target selection** (``_sample_mask`` of zihangdai/xlnet): the sequence is cut, left to right,
into context windows; each window draws an n-gram length n in 1..``max_gram`` with p(n) ∝ 1/n,
is ``k * n`` tokens long and holds one span of n consecutive tokens at a uniformly random offset
(the window's remaining tokens are context). So about 1/``k`` of the tokens are predicted. The
budget is then met exactly, as the reference does: ``num_predict`` tokens per row
(default ``max(1, n // k)`` of its n real non-special tokens): spans past the budget are cut (the
last selected tokens, in reading order, are dropped) and a short row is topped up with uniformly
chosen single tokens. Special tokens and padding are never predicted. As the reference's
``_is_start_piece`` check always passes after a span's first token, n-grams count tokens.

**Factorisation order** (``_local_perm``): every non-predicted token comes before every predicted
one (they see each other, never a predicted token); the predicted tokens follow in a uniformly
random order. With ``order[i]`` = 0 for a non-predicted position and 1..M (its place in the
order) for a predicted one, the query stream's mask is

    perm_mask[i, j] = 1  ⇔  order[j] > 0 and order[j] >= order[i]   (i may not see j)

and the content stream additionally sees itself (the encoder adds the diagonal). Unlike the
reference, [CLS]/[SEP] are ordered with the non-predicted tokens (the issue's "non-predicted
tokens before predicted ones"); the reference puts them among the permuted ones.

Outputs: ``perm_mask`` bool [B, T, T]; ``target_mapping`` float [B, M, T] (row m one-hot at the
m-th predicted position in reading order, all zero on padding rows; M is the batch's largest
budget); ``plm_labels`` long [B, M] (the original token, -100 on padding rows). ``input_ids`` are
left as they are: the query stream never reads a target's content.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from clozelab.core.errors import config_error
from clozelab.corruption.base import (
    IGNORE_INDEX,
    Corruption,
    candidates,
    check_positive_int,
    choose_k,
)


def _positions_rank(priority: Tensor) -> Tensor:
    """rank[b, t] = place of t when row b is sorted by ``priority`` (ascending, stable)."""
    order = priority.argsort(dim=-1, stable=True)
    rank = torch.empty_like(order)
    return rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))


class PermutationTargets(Corruption):
    """Args:
    k: XLNet's K: one token in about k is predicted (paper: 6 or 7); each span of n tokens
        sits in a window of k * n tokens (the reference's mask_alpha / mask_beta).
    max_gram: longest span (reference: 5); lengths 1..max_gram with p(n) ∝ 1/n.
    num_predict: tokens predicted per row (capped at its real non-special tokens); null:
        max(1, n // k) of the row's n real non-special tokens.
    vocab_size, mask_token_id, special_token_ids: from the tokenizer at run time (unused but
        for ``special_token_ids`` when the batch has no ``special_tokens_mask``).
    """

    produces = ("input_ids", "perm_mask", "target_mapping", "plm_labels")

    def __init__(
        self,
        k: int = 6,
        max_gram: int = 5,
        num_predict: int | None = None,
        *,
        vocab_size: int | None = None,
        mask_token_id: int | None = None,
        special_token_ids=(),
    ) -> None:
        self.k = check_positive_int(k, "corruption.k")
        if self.k < 2:
            raise config_error(
                "corruption.k",
                k,
                "one token in k is predicted: k must be >= 2",
                "use 6 or 7 (XLNet)",
            )
        self.max_gram = check_positive_int(max_gram, "corruption.max_gram")
        self.num_predict = check_positive_int(
            num_predict, "corruption.num_predict", allow_none=True
        )
        self.special_token_ids = tuple(int(i) for i in special_token_ids)
        grams = torch.arange(1, self.max_gram + 1, dtype=torch.float64)
        self.gram_probs = (1.0 / grams) / (1.0 / grams).sum()  # p(n) ∝ 1/n

    # ------------------------------------------------------------------ selection
    def budget(self, eligible: Tensor) -> Tensor:
        """[B] tokens to predict per row."""
        n = eligible.sum(-1)
        goal = (
            (n // self.k).clamp_min(1)
            if self.num_predict is None
            else torch.full_like(n, self.num_predict)
        )
        return torch.minimum(goal, n)

    def span_cover(self, b: int, t: int, generator: torch.Generator) -> Tensor:
        """bool [B, T]: the union of the spans laid window after window from position 0."""
        windows = math.ceil(t / self.k) + 1  # the shortest window (n = 1) is k tokens
        grams = (
            torch.multinomial(
                self.gram_probs.expand(b, -1), windows, replacement=True, generator=generator
            )
            + 1
        )  # (B, W)
        context = self.k * grams  # (B, W)
        offset = (
            torch.rand(b, windows, generator=generator, dtype=torch.float64) * (context - grams)
        ).long()  # in [0, k*n - n)
        begin = context.cumsum(-1) - context + offset  # (B, W)
        end = begin + grams
        inside = end <= t
        delta = torch.zeros(b, t + 1, dtype=torch.long)
        delta.scatter_add_(1, begin.clamp_max(t), inside.long())
        delta.scatter_add_(1, end.clamp_max(t), -inside.long())
        return delta[:, :t].cumsum(-1) > 0

    def select(self, eligible: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(predicted bool [B, T], budget [B]): spans cut / topped up to the budget exactly."""
        b, t = eligible.shape
        covered = self.span_cover(b, t, generator) & eligible
        goal = self.budget(eligible)
        # spans past the budget are cut: the last covered tokens in reading order go
        kept = covered & (covered.cumsum(-1) <= goal[:, None])
        # a short row is topped up with uniformly chosen single tokens
        need = goal - kept.sum(-1)
        keys = torch.rand(b, t, generator=generator)
        extra = choose_k(keys, eligible & ~kept, need)
        return kept | extra, goal

    # ------------------------------------------------------------------ order and masks
    def order(self, where: Tensor, valid: Tensor, t: int, generator) -> Tensor:
        """int16 [B, T]: 0 for non-predicted positions, 1..M = place in the random order of the
        predicted positions ``where`` [B, M] (``valid`` rows; ``target_mapping``'s). One uniform
        key per prediction row, sorted over the M rows only."""
        b, m = where.shape
        key = torch.rand(b, m, generator=generator).masked_fill_(~valid, 2.0)
        place = _positions_rank(key) + 1  # valid rows take places 1..budget
        order = torch.zeros(b, t + 1, dtype=torch.int16)  # column t: the padding rows' sink
        index = torch.where(valid, where, t)
        return order.scatter_(1, index, place.to(torch.int16))[:, :t]

    @staticmethod
    def perm_mask(order: Tensor) -> Tensor:
        """bool [B, T, T], True where i may not attend to j (the query stream's rule):
        j is predicted and not before i, i.e. order[j] >= max(order[i], 1)."""
        b, t = order.shape
        if b == 0 or t == 0:
            return torch.zeros(b, t, t, dtype=torch.bool)
        m = int(order.max())
        # row i depends on order[i] only: build the m + 1 distinct rows, then copy them out
        levels = torch.arange(1, m + 2, dtype=order.dtype)
        rows = order[:, None, :] >= levels[None, :, None]  # (B, m + 1, T): order[j] >= v
        pick = (order.clamp_min(1) - 1).long() + torch.arange(b)[:, None] * (m + 1)  # (B, T)
        return rows.reshape(-1, t).index_select(0, pick.reshape(-1)).view(b, t, t)

    @staticmethod
    def target_mapping(predicted: Tensor, goal: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(target_mapping float [B, M, T], positions long [B, M], valid bool [B, M]): row m
        of a row is its m-th predicted position in reading order (a running count places each)."""
        b, t = predicted.shape
        m = max(int(goal.max()) if goal.numel() else 0, 1)
        rank = predicted.cumsum(-1) - 1  # (B, T): a predicted position's row
        index = torch.where(predicted, rank, m)  # non-predicted: the sink column m
        where = torch.zeros(b, m + 1, dtype=torch.long)
        where = where.scatter_(1, index, torch.arange(t).expand(b, t))[:, :m]  # (B, M)
        valid = torch.arange(m)[None, :] < goal[:, None]
        mapping = torch.zeros(b, m, t)
        mapping.scatter_(2, where[:, :, None], valid[:, :, None].float())
        return mapping, where, valid

    def __call__(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        eligible = candidates(batch, self.special_token_ids)
        predicted, goal = self.select(eligible, generator)
        mapping, where, valid = self.target_mapping(predicted, goal)
        order = self.order(where, valid, predicted.shape[1], generator)
        out = dict(batch)
        out["perm_mask"] = self.perm_mask(order)
        out["target_mapping"] = mapping
        out["plm_labels"] = batch["input_ids"].gather(1, where).masked_fill(~valid, IGNORE_INDEX)
        return out

    def preview_render(self, clean: dict, out: dict, row: int, tokenizer) -> str:
        """The row with each predicted token marked by its place in the factorisation order:
        ``word@3`` is predicted third (after every unmarked token)."""
        vocab = tokenizer.hf.id_to_token
        predicted = out["target_mapping"][row].sum(0) > 0  # (T,)
        seen = (~out["perm_mask"][row] & predicted[None, :]).sum(-1)  # predictions before it
        pieces = []
        for pos in range(int(clean["attention_mask"][row].sum())):
            tok = int(clean["input_ids"][row, pos])
            text = vocab(tok) or f"<{tok}>"
            pieces.append(f"{text}@{int(seen[pos]) + 1}" if predicted[pos] else text)
        return " ".join(pieces)

    def preview_stats(self, pairs: list[tuple[dict, dict]], tokenizer) -> dict:
        """The generic statistics plus XLNet's: predicted fraction, span lengths (maximal runs
        of predicted tokens) and the order's properties: how much of the sequence each
        prediction sees, and violations of XLNet's rules (a non-predicted token seeing a
        predicted one, a prediction seeing itself, two predictions seeing each other); the
        violation count is 0 by construction."""
        from clozelab.corruption.units import Runs

        eligible_total = predicted_total = violations = 0
        lengths: dict[int, int] = {}
        context, first_context = [], []
        for clean, out in pairs:
            eligible = candidates(clean, self.special_token_ids)
            predicted = out["target_mapping"].sum(1) > 0  # (B, T)
            real = clean["attention_mask"].bool()
            perm = out["perm_mask"]
            eligible_total += int(eligible.sum())
            predicted_total += int(predicted.sum())
            visible = ~perm & real[:, None, :]  # (B, T, T) the query stream's context
            both = predicted[:, :, None] & predicted[:, None, :]
            violations += int((visible & (~predicted)[:, :, None] & predicted[:, None, :]).sum())
            violations += int((visible.diagonal(dim1=1, dim2=2) & predicted).sum())
            violations += int((visible & visible.transpose(1, 2) & both).sum())
            share = visible.sum(-1).float() / real.sum(-1, keepdim=True).float()  # (B, T)
            context.append(share[predicted])
            n_seen = (visible & predicted[:, None, :]).sum(-1)  # predictions seen before it
            first_context.append(share[predicted & (n_seen == 0)])
            runs = Runs(predicted)
            b, t = predicted.shape
            col = runs.run_id.clamp_min(0)
            size = torch.zeros(b, t, dtype=torch.long).scatter_add_(1, col, predicted.long())
            valid = torch.arange(t).expand(b, t) < runs.n[:, None]
            for k, v in zip(*torch.unique(size[valid], return_counts=True)):
                lengths[int(k)] = lengths.get(int(k), 0) + int(v)
        n_spans = max(sum(lengths.values()), 1)
        context_all = torch.cat(context) if context else torch.zeros(0)
        firsts = torch.cat(first_context) if first_context else torch.zeros(0)
        return {
            **super().preview_stats(pairs, tokenizer),
            "plm_predicted_fraction": predicted_total / max(eligible_total, 1),
            "plm_k": self.k,
            "plm_span_length_tokens_mean": sum(k * v for k, v in lengths.items()) / n_spans,
            "plm_span_length_tokens_histogram": {str(k): v for k, v in sorted(lengths.items())},
            "plm_context_fraction_mean": float(context_all.mean()) if len(context_all) else None,
            "plm_first_prediction_context_fraction_mean": (
                float(firsts.mean()) if len(firsts) else None
            ),
            "plm_order_violations": violations,
        }

    def __repr__(self) -> str:
        return (
            f"PermutationTargets(k={self.k}, max_gram={self.max_gram}, "
            f"num_predict={self.num_predict})"
        )
