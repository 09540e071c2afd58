"""BERT token masking: choose single tokens, then [MASK] / random / keep them (SPECS §1, §3, §4).

``TokenMasking`` is the token-level fast path (``corruption=mask``); the unit-level schemes (whole
word, entity, phrase) and their shared base ``MaskingCorruption`` live in ``masking.py``, which also
owns what both do to a chosen token (``MaskedReplacement``: the 80/10/10 mixture, the [MASK] id and
the sampler of random tokens). Both module paths are ``_target_`` names in saved run configs, so
they keep their names.

Three budgets:

* ``bernoulli`` — each candidate is chosen independently with probability ``rate`` (HF collator).
  The count per row is Binomial(n_candidates, rate) and can be 0.
* ``exact`` — BERT's ``create_masked_lm_predictions`` (Devlin et al.; SPECS §1): exactly
  ``K = min(max_predictions, max(1, round_half_even(n_real * rate)))`` per row, where ``n_real``
  counts the row's special tokens but not its padding, drawn uniformly without replacement among the
  candidates (and capped at their number).
* ``fairseq`` — RoBERTa's dynamic masking (fairseq ``MaskTokensDataset``): exactly
  ``K = int(rate * n_real + u)`` with one ``u ~ U[0, 1)`` per row (so ``E[K] = rate * n_real``),
  ``n_real`` counting specials as fairseq's item length does (``<s> .. </s>``); the K positions are
  drawn uniformly without replacement among the candidates. (fairseq draws them over every position
  of the item, so ``<s>``/``</s>`` can be picked there; clozelab never corrupts specials.)

``max_predictions`` also caps the bernoulli budget: a row with more selections keeps a uniform
subset of that size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from clozelab.corruption.base import (
    apply_operations,
    candidates,
    check_choice,
    check_positive_int,
    choose_k,
    mlm_targets,
    prediction_budget,
)
from clozelab.corruption.masking import MaskedReplacement

BUDGETS = ("bernoulli", "exact", "fairseq")


class TokenMasking(MaskedReplacement):
    """Token-level masked-LM corruption.

    Args:
        rate: fraction of tokens chosen for prediction (``corruption.rate``).
        mask_prob, random_prob, keep_prob: what happens to a chosen token (BERT's 80/10/10).
        budget: ``"bernoulli"`` (independent draws), ``"exact"`` (BERT's fixed count per row) or
            ``"fairseq"`` (RoBERTa's ``int(rate * n + U[0, 1))`` per row).
        max_predictions: upper bound on predictions per row (BERT: 20 at length 128), or None.
        replace_from: ``"nonspecial"`` (RoBERTa) or ``"vocab"`` (BERT/HF) for random tokens.
        replace_distribution: ``"uniform"`` or ``"unigram"`` (corpus frequencies: the seeds'
            "sampled by unigram probability"; the table is counted once from the shards).
        vocab_size, mask_token_id, special_token_ids: taken from the tokenizer at run time.
        corpus: the training corpus's statistics (run time; ``unigram`` and phrases need it).
        replacement_probs: optional explicit ``[vocab_size]`` weights for random tokens.

    Produces ``input_ids`` (corrupted copy), ``mlm_labels`` (original id at chosen positions,
    -100 elsewhere) and ``replaced_mask`` (True where a random id was written).
    """

    produces = ("input_ids", "mlm_labels", "replaced_mask")

    def __init__(
        self,
        rate: float = 0.15,
        mask_prob: float = 0.8,
        random_prob: float = 0.1,
        keep_prob: float = 0.1,
        budget: str = "bernoulli",
        max_predictions: int | None = None,
        replace_from: str = "nonspecial",
        replace_distribution: str = "uniform",
        *,
        vocab_size: int,
        mask_token_id: int,
        special_token_ids: Iterable[int],
        corpus=None,
        replacement_probs: Tensor | None = None,
    ) -> None:
        super().__init__(
            rate,
            mask_prob,
            random_prob,
            keep_prob,
            replace_from,
            replace_distribution,
            vocab_size=vocab_size,
            mask_token_id=mask_token_id,
            special_token_ids=special_token_ids,
            corpus=corpus,
            replacement_probs=replacement_probs,
        )
        self.budget = check_choice(budget, "corruption.budget", BUDGETS)
        self.max_predictions = check_positive_int(
            max_predictions, "corruption.max_predictions", allow_none=True
        )

    def rate_of_remaining(self) -> bool:
        """Bernoulli draws take the rate of the candidates left; exact budgets count the row."""
        return self.budget == "bernoulli"

    def select(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> Tensor:
        """Return the ``bool [B, T]`` positions chosen for prediction."""
        eligible = candidates(batch, self.special_token_ids)
        keys = torch.rand(eligible.shape, generator=generator, device=eligible.device)
        if self.budget != "bernoulli":
            attention = batch.get("attention_mask")
            if attention is None:
                n_real = torch.full(eligible.shape[:-1], eligible.shape[-1], device=eligible.device)
            else:
                n_real = attention.bool().sum(dim=-1)
            if self.budget == "exact":
                k = prediction_budget(n_real, self.rate, self.max_predictions)
            else:
                k = fairseq_budget(n_real, self.rate, generator, self.max_predictions)
            return choose_k(keys, eligible, k)
        chosen = eligible & (keys < self.rate)
        if self.max_predictions is not None and chosen.shape[-1] > self.max_predictions:
            # The keys of chosen positions are i.i.d. uniform on [0, rate): keeping the smallest
            # max_predictions of them is a uniform subset, with no extra random draw.
            k = torch.full(chosen.shape[:-1], self.max_predictions, device=chosen.device)
            chosen = choose_k(keys, chosen, k)
        return chosen

    def __call__(
        self, batch: Mapping[str, Tensor], generator: torch.Generator
    ) -> dict[str, Tensor]:
        input_ids = batch["input_ids"]
        if input_ids.dim() != 2:
            raise ValueError(f"TokenMasking expects input_ids [B, T], got {tuple(input_ids.shape)}")
        self.sampler.check_table()
        selected = self.select(batch, generator)
        new_ids, replaced = apply_operations(
            input_ids, selected, self.mix, generator, self.mask_token_id, self.sampler
        )
        out = dict(batch)
        out["input_ids"] = new_ids
        out["mlm_labels"] = mlm_targets(input_ids, selected)
        out["replaced_mask"] = replaced
        return out

    def __repr__(self) -> str:
        return (
            f"TokenMasking(rate={self.rate}, mask_prob={self.mix.mask}, "
            f"random_prob={self.mix.random}, keep_prob={self.mix.keep}, budget={self.budget!r}, "
            f"max_predictions={self.max_predictions}, replace_from={self.replace_from!r}, "
            f"replace_distribution={self.replace_distribution!r}, "
            f"vocab_size={self.vocab_size}, mask_token_id={self.mask_token_id})"
        )


def fairseq_budget(
    n_tokens: Tensor, rate: float, generator: torch.Generator, max_predictions: int | None = None
) -> Tensor:
    """fairseq's per-row count ``int(rate * n + u)``, ``u ~ U[0, 1)`` (probabilistic rounding)."""
    u = torch.rand(n_tokens.shape, generator=generator, dtype=torch.float64)
    k = torch.floor(n_tokens.to(torch.float64).cpu() * rate + u).to(torch.long).to(n_tokens.device)
    if max_predictions is not None:
        k = k.clamp_max(max_predictions)
    return k
