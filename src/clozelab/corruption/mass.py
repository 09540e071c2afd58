"""MASS: masked sequence-to-sequence pre-training (Song et al. 2019, §2.2; SPECS.md §17).

One contiguous fragment x[u:v] of ``k = max(1, round(fragment * m))`` of a row's m non-special
tokens (the paper's k ~ 50% of m; k = 1 is close to BERT's MLM, k = m to GPT) starts uniformly at
random. In the encoder its tokens get BERT's 80/10/10 ([MASK] / random non-special id / unchanged);
the decoder predicts exactly the fragment (``labels``, no eos): its inputs are the fragment shifted
right by one with [MASK] first (the paper's masked decoder input before the fragment), and
``decoder_position_ids`` give each fragment token's position in the sentence (MASS keeps the
original positions). The loss covers the k fragment tokens only. Random starts are uniform (the
paper); the MASS repository's 20% start / 20% end heuristic is not reproduced.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from clozelab.corruption.base import OperationMix, check_rate, replacement_sampler
from clozelab.corruption.seq2seq import (
    Compactor,
    Seq2SeqCorruption,
    as_numpy,
    as_torch,
    decoder_side,
    eligible,
)
from clozelab.corruption.t5 import to_positions


class MassMasking(Seq2SeqCorruption):
    """Args:
    fragment: fragment length as a fraction of the row's non-special tokens (paper: 0.5).
    mask_prob, random_prob, keep_prob: the fragment's operations in the encoder (80/10/10).
    replace_from, replace_distribution: where random tokens come from (``TokenMasking``'s knobs;
        MASS: uniform over the non-special ids).
    decoder_start, bos: see ``Seq2SeqCorruption`` (MASS: [MASK], keeps [CLS]).
    """

    produces = (*Seq2SeqCorruption.produces, "decoder_position_ids")
    runtime_inputs = Seq2SeqCorruption.runtime_inputs | {"corpus"}  # unigram replacement

    def __init__(
        self,
        fragment: float = 0.5,
        mask_prob: float = 0.8,
        random_prob: float = 0.1,
        keep_prob: float = 0.1,
        replace_from: str = "nonspecial",
        replace_distribution: str = "uniform",
        decoder_start: str = "mask",
        bos: bool = True,
        corpus=None,
        replacement_probs: Tensor | None = None,
        **runtime,
    ) -> None:
        super().__init__(decoder_start, bos, **runtime)
        self.fragment = check_rate(fragment, "corruption.fragment") if fragment != 1 else 1.0
        self.mix = OperationMix(mask_prob, random_prob, keep_prob)
        self.sampler = replacement_sampler(
            self.vocab_size,
            [*self.special_token_ids, self.mask_token_id],
            replace_from,
            replace_distribution,
            corpus,
            replacement_probs,
            needed=self.mix.random > 0,
        )

    def fragment_mask(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> np.ndarray:
        candidates = eligible(batch, self.special_token_ids)
        m = candidates.sum(-1)
        k = np.minimum(np.maximum(np.round(m * self.fragment), 1), m).astype(np.int64)  # half even
        u = as_numpy(torch.rand(m.shape[0], generator=generator, dtype=torch.float64))
        start = np.floor(u * (m - k + 1)).astype(np.int64)
        items = np.arange(candidates.shape[1])
        inside = (items >= start[:, None]) & (items < (start + k)[:, None])
        return to_positions(inside, candidates)

    def __call__(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        self.sampler.check_table()
        ids = as_numpy(batch["input_ids"])
        fragment = self.fragment_mask(batch, generator)
        u = as_numpy(torch.rand(ids.shape, generator=generator))
        masked = fragment & (u < self.mix.mask)
        random = fragment & (u >= self.mix.mask) & (u < self.mix.mask + self.mix.random)
        noisy = np.where(masked, self.mask_token_id, ids)
        noisy[random] = as_numpy(self.sampler.sample(int(random.sum()), generator))
        out = self.source(batch, noisy, self.real(batch))
        compactor = Compactor(fragment)
        target = compactor(ids, self.pad_token_id)
        out.update(decoder_side(target, compactor.lengths, self.start_id, self.pad_token_id))
        positions = np.broadcast_to(np.arange(ids.shape[1]) - self.dropped_bos(), ids.shape)
        out["decoder_position_ids"] = as_torch(compactor(positions, 0))  # positions in the source
        return out

    def __repr__(self) -> str:
        return f"MassMasking(fragment={self.fragment}, mix={self.mix})"
