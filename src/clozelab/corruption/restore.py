"""Restore the original: any encoder corruption as a seq2seq objective whose target is the clean
row (T5's BERT-style / MASS-style / deshuffling objectives, Raffel et al. 2020 Table 4; BART's token
masking / deletion / insertion / permutation, Lewis et al. 2020 Table 1; SPECS.md §13-14, §16).

The steps run as a ``Compose`` (one shared budget); the source is the corrupted row (its real
tokens), the target the original row, which ends with [SEP] (eos). Config::

    _target_: clozelab.corruption.restore.Restore
    _recursive_: false
    decoder_start: eos          # BART; T5: pad
    bos: true                   # BART keeps <s>/[CLS]; T5 drops it
    steps:
      - {_target_: clozelab.corruption.mask.TokenMasking, rate: 0.15, mask_prob: 0.9, ...}
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from clozelab.corruption.compose import Compose
from clozelab.corruption.runtime import restrict
from clozelab.corruption.seq2seq import Seq2SeqCorruption, as_numpy


class Restore(Seq2SeqCorruption):
    """Args:
    steps: the corruptions applied to the source (``Compose`` semantics).
    decoder_start, bos: see ``Seq2SeqCorruption``.
    """

    runtime_inputs = Seq2SeqCorruption.runtime_inputs | {"corpus"}  # the steps' tables

    def __init__(self, steps, decoder_start: str = "eos", bos: bool = True, **runtime) -> None:
        corpus = {"corpus": runtime.pop("corpus", None)}
        super().__init__(decoder_start, bos, **runtime)
        self.steps = Compose(steps, **restrict(Compose, {**runtime, **corpus}))

    @classmethod
    def check_keys(
        cls, node, provided: set[str], read: set[str] | None = None, key: str = "corruption"
    ) -> None:
        """Its steps against the data (``Compose.check_keys``)."""
        Compose.check_keys(node, provided, read, key)

    def output_length(self, n_tokens: int, n_special: int) -> int:
        return self.steps.output_length(n_tokens, n_special) - self.dropped_bos()

    def __call__(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        noisy = self.steps(batch, generator)
        out = self.source(noisy, as_numpy(noisy["input_ids"]), self.real(noisy))
        out.update(self.restore_target(batch))
        return out

    def __repr__(self) -> str:
        return f"Restore({self.steps.steps!r}, decoder_start={self.decoder_start!r})"
