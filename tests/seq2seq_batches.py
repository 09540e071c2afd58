"""A test-only seq2seq batch builder (SEQ2SEQ_CONTRACT.md keys), so the model side is tested end
to end independently of the corruption presets: i.i.d. masking of ``rate`` of the non-special
tokens (each masked token becomes [MASK], or the first T5 sentinel when ``extra_vocab`` > 0) and
the whole original sequence as the target (T5's "BERT-style" restore objective)."""

from __future__ import annotations

import torch

from clozelab.core.batch import IGNORE_INDEX
from clozelab.corruption.base import Corruption


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """decoder_input_ids: start, then labels[:, :-1]; pad where the label is -100."""
    out = torch.full_like(labels, pad_id)
    out[:, 0] = start_id
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill(labels == IGNORE_INDEX, pad_id)


class RestoreForTest(Corruption):
    runtime_inputs = frozenset({"pad_token_id"})
    requires = ("input_ids", "attention_mask", "special_tokens_mask")
    produces = ("input_ids", "attention_mask", "labels", "decoder_input_ids",
                "decoder_attention_mask")  # fmt: skip

    def __init__(self, vocab_size, mask_token_id, special_token_ids, pad_token_id, rate=0.15,
                 extra_vocab=0):  # fmt: skip
        self.vocab_size, self.mask_id, self.pad_id = vocab_size, mask_token_id, pad_token_id
        self.rate, self.extra_vocab = rate, int(extra_vocab)

    def __call__(self, batch, generator):
        ids = batch["input_ids"]
        real = batch["attention_mask"].bool()
        candidates = real & ~batch["special_tokens_mask"].bool()
        noise = (torch.rand(ids.shape, generator=generator) < self.rate) & candidates
        fill = self.vocab_size + self.extra_vocab - 1 if self.extra_vocab else self.mask_id
        labels = ids.masked_fill(~real, IGNORE_INDEX)
        out = {k: v for k, v in batch.items() if k not in ("word_ids", "entity_ids", "phrase_ids")}
        out["input_ids"] = ids.masked_fill(noise, fill)
        out["labels"] = labels
        out["decoder_input_ids"] = shift_right(labels, self.pad_id, self.pad_id)
        out["decoder_attention_mask"] = real.long()
        return out


TARGET = "seq2seq_batches.RestoreForTest"
