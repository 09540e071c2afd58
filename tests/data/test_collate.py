"""Collation: padding, attention mask, seeded corruption per batch."""

from __future__ import annotations

import numpy as np
import torch

from clozelab.corruption.mask import TokenMasking
from clozelab.data.collate import Collator, batch_seed


def _item(index, n):
    ids = np.arange(10, 10 + n)
    ids[0], ids[-1] = 2, 3
    special = np.zeros(n, dtype=np.int64)
    special[[0, -1]] = 1
    return {
        "index": np.int64(index),
        "input_ids": ids,
        "token_type_ids": np.zeros(n, dtype=np.int64),
        "special_tokens_mask": special,
        "word_ids": np.where(special == 1, -1, np.arange(n) - 1),
        "next_sentence_label": np.int64(index % 2),
    }


def _masking():
    return TokenMasking(
        rate=0.3, vocab_size=100, mask_token_id=4, special_token_ids=[0, 1, 2, 3, 4]
    )


def test_padding_and_masks():
    batch = Collator(pad_id=0, pad_to_multiple_of=8)([_item(0, 5), _item(1, 11)])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"].sum(1).tolist() == [5, 11]
    assert (batch["input_ids"][0, 5:] == 0).all()
    assert (batch["special_tokens_mask"][0, 5:] == 1).all()
    assert (batch["word_ids"][0, 5:] == -1).all()
    assert batch["next_sentence_label"].tolist() == [0, 1]
    assert batch["index"].tolist() == [0, 1]


def test_corruption_is_seeded_by_seed_epoch_and_indices():
    items = [_item(i, 60) for i in range(4)]
    collate = Collator(pad_id=0, corruption=_masking(), seed=7)
    first, again = collate(items), collate(items)
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert (first["mlm_labels"] != -100).any()
    collate.epoch = 1
    assert not torch.equal(first["input_ids"], collate(items)["input_ids"])
    assert batch_seed(7, 0, [0, 1]) != batch_seed(7, 0, [1, 0])
    assert batch_seed(7, 0, [0, 1]) != batch_seed(8, 0, [0, 1])


def test_the_collated_batch_declares_its_stream_and_survives_a_weights_only_load(tmp_path):
    from clozelab.core.batch import Batch, DialogueBatch, JointBatch

    items = [_item(0, 5), _item(1, 7)]
    text = Collator(pad_id=0, corruption=_masking())(items)
    dialogue = Collator(pad_id=0, batch_type=DialogueBatch)(items)
    assert type(text) is Batch and text.stream == "text" and text.streams() == [text]
    assert dialogue.stream == "dialogue"
    joint = JointBatch({"text": text, "dialogue": dialogue})
    assert joint.streams() == [text, dialogue]
    torch.save(joint, tmp_path / "batch.pt")
    loaded = torch.load(tmp_path / "batch.pt", weights_only=True)
    assert type(loaded) is JointBatch and type(loaded["dialogue"]) is DialogueBatch
    assert all(torch.equal(loaded["text"][k], v) for k, v in text.items())
