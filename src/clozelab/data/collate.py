"""Batching: pad instances, then corrupt them (dynamic masking inside DataLoader workers)."""

from __future__ import annotations

import numpy as np
import torch

from clozelab.core.batch import Batch

PAD_VALUES = {"input_ids": None, "token_type_ids": 0, "special_tokens_mask": 1,
              "word_ids": -1, "entity_ids": -1, "sentence_ids": -1, "role_ids": 0,
              "phrase_ids": -1, "entity_links": -1, "case_labels": -100,
              "token_document_labels": -100}  # fmt: skip
LABEL_KEYS = ("next_sentence_label", "sentence_order_label", "dialogue_label",
              "sentence_distance_label", "permutation_label")  # one per sequence  # fmt: skip


def batch_seed(seed: int, epoch: int, indices) -> int:
    """A 63-bit seed from (seed, epoch, the batch's sample indices): the same batch always gets
    the same corruption, in any worker, after a resume, whatever the worker count."""
    entropy = [int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF, *(int(i) for i in indices)]
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0] >> np.uint64(1))


class Collator:
    """Pads a list of instances to the longest (rounded up to ``pad_to_multiple_of``), builds the
    attention mask, and applies the corruption with a generator seeded by ``batch_seed``; the
    result is a ``batch_type`` (``clozelab.core.batch``: the stream the batch declares)."""

    def __init__(
        self,
        pad_id: int,
        corruption=None,
        seed: int = 0,
        pad_to_multiple_of: int = 8,
        batch_type: type[Batch] = Batch,
    ):
        self.pad_id, self.corruption, self.seed = pad_id, corruption, seed
        self.pad_to_multiple_of = pad_to_multiple_of
        self.batch_type = batch_type
        self.epoch = 0

    def __call__(self, items: list[dict[str, np.ndarray]]) -> Batch:
        lengths = [len(item["input_ids"]) for item in items]
        width = max(lengths)
        if self.pad_to_multiple_of > 1:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, torch.Tensor] = {}
        for key, pad in PAD_VALUES.items():
            if key not in items[0]:
                continue
            fill = self.pad_id if pad is None else pad
            out = np.full((len(items), width), fill, dtype=np.int64)
            for row, item in enumerate(items):
                out[row, : lengths[row]] = item[key]
            batch[key] = torch.from_numpy(out)
        mask = np.zeros((len(items), width), dtype=np.int64)
        for row, n in enumerate(lengths):
            mask[row, :n] = 1
        batch["attention_mask"] = torch.from_numpy(mask)
        indices = [int(item["index"]) for item in items]
        batch["index"] = torch.tensor(indices)
        for key in LABEL_KEYS:
            if key in items[0]:
                batch[key] = torch.tensor([int(item[key]) for item in items])
        if self.corruption is not None:
            generator = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, indices))
            batch = self.corruption(batch, generator)
        return self.batch_type(batch)
