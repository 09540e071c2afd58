"""dEA objective (SPECS §19): softmax over the candidate entities; compose-time refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clozelab.core.errors import ClozelabError
from clozelab.model.knowledge import KnowledgeOutput
from clozelab.objectives.dea import DenoisingEntityAutoencoder
from clozelab.training.validate import validate_pretrain

H, E = 16, 8


def _case():
    torch.manual_seed(0)
    table = torch.randn(30, E)
    hidden = torch.randn(2, 6, H)
    labels = torch.full((2, 6), -100)
    labels[0, 1], labels[0, 3], labels[1, 2] = 4, 9, 17
    links = labels.clone().masked_fill(labels < 0, -1)
    links[0, 3] = -1  # dropped alignment
    links[1, 2] = 25  # replaced by a random entity: a candidate too
    output = KnowledgeOutput(last_hidden_state=hidden, entity_table=table)
    return output, {"entity_labels": labels, "entity_links": links}


def test_loss_is_the_softmax_over_the_batch_entities():
    output, batch = _case()
    dea = DenoisingEntityAutoencoder(H, E)
    out = dea(output, batch, None)
    candidates = torch.tensor([4, 9, 17, 25])
    query = dea.transform(output.last_hidden_state[[0, 0, 1], [1, 3, 2]])
    logits = query @ output.entity_table[candidates].T
    want = F.cross_entropy(logits, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(out.loss, want)
    assert out.n_targets == 3 and set(out.logs) == {"dea_loss", "dea_acc"}


def test_sequence_candidates_are_the_rows_own_entities():
    output, batch = _case()
    dea = DenoisingEntityAutoencoder(H, E, candidates="sequence")
    out = dea(output, batch, None)
    candidates = torch.tensor([4, 9, 17, 25])
    query = dea.transform(output.last_hidden_state[[0, 0, 1], [1, 3, 2]])
    logits = query @ output.entity_table[candidates].T
    logits[:2, 2:] = -1e4  # row 0 holds 4 and 9
    logits[2, :2] = -1e4  # row 1 holds 17 and 25
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, torch.tensor([0, 1, 2])))


def test_no_alignment_gives_a_zero_loss_with_a_graph():
    output, batch = _case()
    batch["entity_labels"].fill_(-100)
    output.last_hidden_state.requires_grad_(True)
    out = DenoisingEntityAutoencoder(H, E)(output, batch, None)
    assert out.n_targets == 0 and float(out.loss.detach()) == 0.0 and out.loss.requires_grad


def test_bad_candidates_name_the_key():
    with pytest.raises(ClozelabError, match="objective.dea.candidates"):
        DenoisingEntityAutoencoder(H, E, candidates="all")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("objective=[mlm,dea]", "corruption=ernie_thu", "data.entity_links=true"),
         r"encoder.*encoder=ernie_thu"),
        (("encoder=ernie_thu", "objective=[mlm,dea]", "corruption=ernie_thu"),
         r"data.entity_links.*data.entity_links=true"),
        (("experiment=ernie_thu", "corruption=mask"), r"entity_labels.*corruption=ernie_thu"),
        (("encoder=ernie_thu",), r"data.entity_links.*encoder=ernie_thu"),
    ],
)  # fmt: skip
def test_compose_time_refusals(compose_pretrain, overrides, message):
    cfg = compose_pretrain(*overrides)
    with pytest.raises(ClozelabError, match=message):
        validate_pretrain(cfg)


def test_the_recipe_validates(compose_pretrain):
    assert validate_pretrain(compose_pretrain("experiment=ernie_thu")) == ["mlm", "nsp", "dea"]
