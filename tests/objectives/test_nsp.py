"""NSP: pooled [CLS] classifier, mean cross-entropy, segment-pair instances only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clozelab.core.errors import ClozelabError
from clozelab.model.encoder import EncoderOutput
from clozelab.objectives.base import Objective
from clozelab.objectives.mlm import MLM
from clozelab.objectives.nsp import NSP

H = 32


def test_contract():
    nsp = NSP(H, weight=2.0)
    assert isinstance(nsp, Objective)
    assert nsp.name == "nsp" and nsp.requires == ("next_sentence_label",)
    assert nsp.instance_kinds == ("segment_pair", "sentence_pair") and nsp.weight == 2.0
    assert nsp.classifier.weight.shape == (2, H) and nsp.pooler.dense.weight.shape == (H, H)


def test_loss_logits_and_accuracy():
    torch.manual_seed(0)
    nsp = NSP(H)
    hidden = torch.randn(4, 6, H)
    labels = torch.tensor([0, 1, 1, 0])
    out = nsp(EncoderOutput(hidden), {"next_sentence_label": labels}, None)
    logits = nsp.classifier(torch.tanh(nsp.pooler.dense(hidden[:, 0])))
    torch.testing.assert_close(nsp.logits(hidden), logits)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, labels))
    assert out.n_targets == 4
    acc = (logits.argmax(-1) == labels).float().mean()
    torch.testing.assert_close(out.logs["nsp_acc"], acc)
    torch.testing.assert_close(out.logs["nsp_loss"], out.loss.detach())
    out.loss.backward()
    assert all(p.grad is not None for p in nsp.parameters())


def test_only_cls_position_matters():
    torch.manual_seed(0)
    nsp = NSP(H)
    hidden = torch.randn(2, 5, H)
    other = hidden.clone()
    other[:, 1:] = torch.randn(2, 4, H)
    torch.testing.assert_close(nsp.logits(hidden), nsp.logits(other))


def test_compatibility_checks():
    NSP.check_compatible("segment_pair", ["input_ids", "next_sentence_label"])
    assert NSP.supports("segment_pair") and not NSP.supports("full_sentences")
    with pytest.raises(ClozelabError, match=r"nsp.*segment_pair"):
        NSP.check_compatible("full_sentences")
    with pytest.raises(ClozelabError, match="next_sentence_label"):
        NSP.check_compatible("segment_pair", ["input_ids"])
    assert MLM.supports("anything")
    with pytest.raises(ClozelabError, match="next_sentence_label"):
        NSP(H)(EncoderOutput(torch.randn(1, 2, H)), {}, None)
