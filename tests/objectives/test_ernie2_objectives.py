"""ERNIE 2.0's objectives (SPECS.md §20): token heads skip unlabelled tokens, pooled heads skip the
other task's rows of a structure batch, and the config refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clozelab.core.errors import ClozelabError
from clozelab.model.encoder import EncoderOutput
from clozelab.objectives.capitalization import CapitalizationPrediction
from clozelab.objectives.sentence_distance import SentenceDistance
from clozelab.objectives.sentence_reorder import SentenceReordering
from clozelab.objectives.token_document import TokenDocumentRelation
from clozelab.training.validate import validate_pretrain


def _hidden(generator, b=4, t=7, h=16):
    return EncoderOutput(last_hidden_state=torch.randn(b, t, h, generator=generator),
                         hidden_states=())  # fmt: skip


@pytest.mark.parametrize("cls", [CapitalizationPrediction, TokenDocumentRelation])
def test_token_head_is_the_mean_over_labelled_tokens(cls):
    generator = torch.Generator().manual_seed(0)
    objective = cls(hidden_size=16, dropout=0.0).eval()
    out = _hidden(generator)
    labels = torch.randint(0, 2, (4, 7), generator=generator)
    labels[:, 0] = -100
    labels[2, 3:] = -100
    result = objective(out, {cls.label_key: labels})
    keep = labels != -100
    logits = objective.classifier(out.last_hidden_state[keep])
    assert result.n_targets == int(keep.sum())
    assert torch.allclose(result.loss, F.cross_entropy(logits, labels[keep]))
    acc = (logits.argmax(-1) == labels[keep]).float().mean()
    assert torch.allclose(result.logs[f"{cls.name}_acc"], acc)
    labels[keep] = 1 - labels[keep]  # the loss reads the labels
    assert not torch.allclose(objective(out, {cls.label_key: labels}).loss, result.loss)


def test_pooled_heads_skip_the_other_tasks_rows():
    generator = torch.Generator().manual_seed(1)
    out = _hidden(generator)
    distance = SentenceDistance(hidden_size=16).eval()
    reorder = SentenceReordering(hidden_size=16, max_segments=4).eval()
    assert distance.classifier.out_features == 3 and reorder.classifier.out_features == 33
    d_labels = torch.tensor([0, -100, 2, -100])
    p_labels = torch.tensor([-100, 32, -100, 5])
    d = distance(out, {"sentence_distance_label": d_labels})
    p = reorder(out, {"permutation_label": p_labels})
    assert d.n_targets == p.n_targets == 2
    rows = torch.tensor([0, 2])
    expected = F.cross_entropy(distance.logits(out.last_hidden_state)[rows], d_labels[rows])
    assert torch.allclose(d.loss, expected)
    none = distance(out, {"sentence_distance_label": torch.full((4,), -100)})
    assert none.n_targets == 0 and float(none.loss.detach()) == 0.0 and none.loss.requires_grad


def test_capitalization_is_refused_with_a_cased_vocabulary(compose_pretrain):
    cfg = compose_pretrain("objective=[mlm,capitalization]", "data.case_flags=true",
                           "tokenizer.lowercase=false")  # fmt: skip
    with pytest.raises(ClozelabError, match="tokenizer.lowercase"):
        validate_pretrain(cfg)
    cfg = compose_pretrain("objective=[mlm,capitalization]")  # no case flags in the shards
    with pytest.raises(ClozelabError, match="case_labels.*data.case_flags=true"):
        validate_pretrain(cfg)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (("objective=[mlm,sentence_distance]",), "data.instances=structure"),
        (("objective=[mlm,sentence_distance]", "data.instances=structure",
          "data.reorder_share=1.0"), "data.reorder_share"),
        (("objective=[mlm,sentence_reorder]", "data.instances=structure",
          "data.reorder_share=0.0"), "data.reorder_share"),
        (("objective=[mlm,sentence_reorder]", "data.instances=structure",
          "objective.sentence_reorder.max_segments=4"), "data.reorder_segments"),
        (("objective=[mlm]", "data.instances=structure", "data.reorder_segments=7"),
         "data.reorder_segments"),
    ],
)  # fmt: skip
def test_structure_objectives_refuse_impossible_data(compose_pretrain, overrides, match):
    with pytest.raises(ClozelabError, match=match):
        validate_pretrain(compose_pretrain(*overrides))
