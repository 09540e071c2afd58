"""Forward and forward/backward language modelling (GPT and ELMo baselines)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clozelab.core.errors import ClozelabError
from clozelab.model.embeddings import BertEmbeddings
from clozelab.model.encoder import EncoderOutput
from clozelab.objectives.lm import LanguageModel

H, V = 8, 30


def _batch():
    ids = torch.tensor([[2, 11, 12, 13, 3], [2, 14, 15, 3, 0]])
    special = torch.tensor([[1, 0, 0, 0, 1], [1, 0, 0, 1, 1]])
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    return {"input_ids": ids, "special_tokens_mask": special, "attention_mask": attention}


def _ce(lm, emb, state, target):
    logits = F.linear(lm.transform(state), emb.word_embeddings.weight, lm.bias)
    return F.cross_entropy(logits[None], torch.tensor([target]))


def test_forward_lm_by_hand():
    torch.manual_seed(0)
    lm, emb = LanguageModel(H, V, direction="forward"), BertEmbeddings(V, H)
    batch = _batch()
    hidden = torch.randn(2, 5, H)
    out = lm(EncoderOutput(hidden), batch, emb)
    # targets: the non-special tokens 11, 12, 13 (row 0) and 14, 15 (row 1), from position t-1
    pairs = [(0, 0, 11), (0, 1, 12), (0, 2, 13), (1, 0, 14), (1, 1, 15)]
    expected = sum(_ce(lm, emb, hidden[r, t], y) for r, t, y in pairs) / 5
    assert out.n_targets == 5
    torch.testing.assert_close(out.loss, expected)


def test_bidirectional_lm_by_hand():
    torch.manual_seed(0)
    lm, emb = LanguageModel(H, V, direction="both"), BertEmbeddings(V, H)
    assert lm.transform.dense.in_features == H // 2
    batch = _batch()
    hidden = torch.randn(2, 5, H)
    out = lm(EncoderOutput(hidden), batch, emb)
    fwd = [(0, 0, 11), (0, 1, 12), (0, 2, 13), (1, 0, 14), (1, 1, 15)]
    bwd = [(0, 2, 11), (0, 3, 12), (0, 4, 13), (1, 2, 14), (1, 3, 15)]
    expected = (sum(_ce(lm, emb, hidden[r, t, : H // 2], y) for r, t, y in fwd)
                + sum(_ce(lm, emb, hidden[r, t, H // 2 :], y) for r, t, y in bwd)) / 10  # fmt: skip
    assert out.n_targets == 10
    torch.testing.assert_close(out.loss, expected)


def test_prepare_inputs_restores_the_original_text():
    batch = _batch()
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 2] = 12
    batch["mlm_labels"] = labels
    masked = batch["input_ids"].clone()
    masked[0, 2] = 4
    batch["input_ids"] = masked
    out = LanguageModel(H, V).prepare_inputs(batch, None)
    assert torch.equal(out["input_ids"], _batch()["input_ids"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("objective=[lm]",), r"encoder=causal"),
        (("objective=[lm]", "encoder=causal", "objective.lm.direction=both"), r"encoder=bilstm"),
        (("experiment=gpt_baseline", "objective=[lm,mlm]"), r"alone"),
        (("experiment=gpt_baseline", "corruption=reorder"), r"corruption=mask"),
    ],
)
def test_refusals(compose_pretrain, overrides, message):
    from clozelab.training.validate import validate_pretrain

    cfg = compose_pretrain("data.instances=full_sentences", *overrides)
    with pytest.raises(ClozelabError, match=message):
        validate_pretrain(cfg)
