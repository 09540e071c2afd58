"""Deletion detection and order prediction: hand-computed losses, the corruptions' targets."""

from __future__ import annotations

import math

import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.corruption.delete import Deletion
from clozelab.corruption.reorder import Reorder
from clozelab.model.encoder import EncoderOutput
from clozelab.objectives.deletion import DeletionDetection
from clozelab.objectives.order import OrderPrediction

H = 8
CLS, SEP, PAD, MASK = 2, 3, 0, 4


def _batch(b=4, t=20):
    ids = torch.randint(10, 60, (b, t))
    ids[:, 0], ids[:, -1] = CLS, SEP
    ids[1, 15:] = PAD
    ids[1, 14] = SEP
    attention = (ids != PAD).long()
    special = ((ids == CLS) | (ids == SEP) | (ids == PAD)).long()
    return {"input_ids": ids, "attention_mask": attention, "special_tokens_mask": special,
            "token_type_ids": torch.zeros_like(ids)}  # fmt: skip


def test_deletion_loss_by_hand():
    torch.manual_seed(0)
    obj = DeletionDetection(H)
    hidden = torch.randn(1, 4, H)
    labels = torch.tensor([[0, 1, 0, -100]])
    out = obj(EncoderOutput(hidden), {"deletion_labels": labels})
    z = (torch.nn.functional.gelu(hidden[0] @ obj.head.dense.weight.T + obj.head.dense.bias)
         @ obj.head.out.weight.T + obj.head.out.bias)[:, 0]  # fmt: skip
    sig = torch.sigmoid(z).detach()
    expected = -(math.log(1 - sig[0]) + math.log(sig[1]) + math.log(1 - sig[2])) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.n_targets == 3 and set(out.logs) == {"deletion_loss", "deletion_acc"}


def test_deletion_consumes_the_delete_corruption():
    batch = _batch()
    corruption = Deletion(0.3, vocab_size=60, mask_token_id=MASK, special_token_ids=[CLS, SEP, PAD])
    out = corruption(batch, torch.Generator().manual_seed(0))
    labels = out["deletion_labels"]
    assert (labels == 1).any()
    obj = DeletionDetection(H)
    res = obj(EncoderOutput(torch.randn(4, 20, H)), out)
    assert res.n_targets == int((labels != -100).sum()) and torch.isfinite(res.loss)
    with pytest.raises(ClozelabError, match="deletion_labels"):
        DeletionDetection.check_compatible(None, ["input_ids", "mlm_labels"])


def test_order_loss_by_hand():
    torch.manual_seed(0)
    obj = OrderPrediction(H, pointer_size=4)
    hidden = torch.randn(1, 4, H)
    labels = torch.tensor([[-100, 2, 1, -100]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = obj(EncoderOutput(hidden), {"order_labels": labels, "attention_mask": mask})
    q = hidden[0] @ obj.query.weight.T + obj.query.bias
    k = hidden[0] @ obj.key.weight.T + obj.key.bias
    s = (q @ k.T) / 2.0  # sqrt(4)
    s[:, 3] = -math.inf  # padding is never an original position
    expected = -(s[1].log_softmax(-1)[2] + s[2].log_softmax(-1)[1]) / 2
    torch.testing.assert_close(out.loss, expected)
    assert out.n_targets == 2


def test_order_consumes_the_reorder_corruption():
    batch = _batch()
    corruption = Reorder(
        0.5, unit="token", vocab_size=60, mask_token_id=MASK, special_token_ids=[CLS, SEP, PAD]
    )  # the batch has no word_ids
    out = corruption(batch, torch.Generator().manual_seed(0))
    labels = out["order_labels"]
    keep = labels != -100
    positions = torch.arange(20).expand(4, 20)
    assert (labels[keep] != positions[keep]).any()
    # the labels index the original sequence: undoing the permutation restores it
    restored = batch["input_ids"].gather(1, labels.clamp_min(0))
    assert torch.equal(restored[keep], out["input_ids"][keep])
    res = OrderPrediction(H)(EncoderOutput(torch.randn(4, 20, H)), out)
    assert res.n_targets == int(keep.sum()) and torch.isfinite(res.loss)
    assert 0.0 <= float(res.logs["order_moved_acc"]) <= 1.0
