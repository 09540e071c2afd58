"""DLM (ERNIE dialogue LM): the real/fake head and loss, its label convention, how PretrainModule
runs it on dialogue batches only, and the compose-time refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clozelab.core.batch import Batch, DialogueBatch, JointBatch
from clozelab.core.errors import ClozelabError
from clozelab.data.dialogue_instances import FAKE, REAL
from clozelab.model.encoder import EncoderOutput
from clozelab.objectives.base import Objective
from clozelab.objectives.dlm import DLM
from clozelab.objectives.mlm import MLM
from clozelab.training.validate import validate_pretrain

H = 32


def test_contract_and_label_convention():
    dlm = DLM(H, weight=0.5)
    assert isinstance(dlm, Objective) and dlm.name == "dlm" and dlm.weight == 0.5
    assert dlm.requires == ("dialogue_label", "role_ids") and dlm.streams == ("dialogue",)
    assert dlm.instance_kinds is None and "dialogue" in MLM.streams and "text" in MLM.streams
    assert (DLM.real, DLM.fake) == (REAL, FAKE) == (1, 0)  # ERNIE: positive = 1
    assert dlm.classifier.weight.shape == (2, H) and dlm.pooler.dense.weight.shape == (H, H)


def test_loss_against_a_hand_computed_reference():
    dlm = DLM(2)
    with torch.no_grad():  # pooler = tanh(identity), classifier = identity: logits = tanh(h_cls)
        dlm.pooler.dense.weight.copy_(torch.eye(2))
        dlm.pooler.dense.bias.zero_()
        dlm.classifier.weight.copy_(torch.eye(2))
        dlm.classifier.bias.zero_()
    hidden = torch.zeros(2, 3, 2)
    hidden[:, 0, 0] = math.atanh(0.5)  # both logits (0.5, 0): "fake" scores higher
    hidden[:, 1:] = 7.0  # not [CLS]: ignored
    labels = torch.tensor([REAL, FAKE])
    out = dlm(EncoderOutput(hidden), {"dialogue_label": labels, "role_ids": torch.zeros(2, 3)})
    # real: -log(e^0 / (e^0.5 + e^0)) = log(1 + e^0.5); fake: log(1 + e^-0.5)
    expected = (math.log(1 + math.exp(0.5)) + math.log(1 + math.exp(-0.5))) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-6) == pytest.approx(0.724077, 1e-5)
    assert out.logs["dlm_acc"].item() == 0.5 and out.n_targets == 2
    torch.testing.assert_close(out.logs["dlm_loss"], out.loss.detach())


def test_shapes_gradients_and_the_real_column():
    torch.manual_seed(0)
    dlm = DLM(H)
    hidden = torch.randn(5, 7, H)
    assert dlm.logits(hidden).shape == (5, 2)
    labels = torch.tensor([1, 0, 1, 1, 0])
    out = dlm(EncoderOutput(hidden), {"dialogue_label": labels, "role_ids": torch.zeros(5, 7)})
    torch.testing.assert_close(out.loss, F.cross_entropy(dlm.logits(hidden), labels))
    out.loss.backward()
    assert all(p.grad is not None for p in dlm.parameters())
    with torch.no_grad():  # a head sure that everything is real: low loss on real, high on fake
        dlm.classifier.weight.zero_()
        dlm.classifier.bias.copy_(torch.tensor([-5.0, 5.0]))
    real = dlm(EncoderOutput(hidden), {"dialogue_label": torch.ones(5, dtype=torch.long),
                                       "role_ids": torch.zeros(5, 7)})  # fmt: skip
    assert real.loss.item() < 1e-3 and real.logs["dlm_acc"].item() == 1.0
    with pytest.raises(ClozelabError, match="dialogue_label"):
        dlm(EncoderOutput(hidden), {"role_ids": torch.zeros(5, 7)})


def _module(compose_pretrain, *overrides):
    from clozelab.data.tokenizer import train_wordpiece
    from clozelab.training.components import build_components
    from clozelab.training.module import PretrainModule

    no_phrases = ("corruption.level_probs.phrase=0.0", "corruption.level_probs.basic=0.7")
    cfg = compose_pretrain("experiment=ernie", *no_phrases, *overrides)
    embedding, encoder, objectives, _ = build_components(cfg, train_wordpiece(["a b c"] * 5, 120))
    module = PretrainModule(embedding, encoder, objectives, optimizer=None)
    return module.eval()


def _batch(dialogue: bool, vocab: int, b=3, t=8):
    torch.manual_seed(1 + dialogue)
    batch = {
        "input_ids": torch.randint(5, vocab, (b, t)),
        "token_type_ids": torch.zeros(b, t, dtype=torch.long),
        "attention_mask": torch.ones(b, t, dtype=torch.long),
        "mlm_labels": torch.full((b, t), -100).index_fill(1, torch.tensor([2, 5]), 5),
    }
    if dialogue:
        batch["role_ids"] = torch.randint(0, 2, (b, t))
        batch["dialogue_label"] = torch.tensor([1, 0, 1])
        return DialogueBatch(batch)
    batch["next_sentence_label"] = torch.tensor([0, 1, 0])
    return Batch(batch)


def test_module_runs_dlm_on_dialogue_batches_only_and_sums_joint_steps(compose_pretrain):
    module = _module(compose_pretrain)
    vocab = module.embedding.vocab_size
    text, dialogue = _batch(False, vocab), _batch(True, vocab)
    with torch.no_grad():
        t_total, t_logs, _ = module(text)
        d_total, d_logs, d_counts = module(dialogue)
        j_total, j_logs, _ = module(JointBatch({"text": text, "dialogue": dialogue}))
    assert {"mlm_loss", "nsp_loss", "loss"} <= set(t_logs) and "dlm_loss" not in t_logs
    assert {"dialogue_mlm_loss", "dlm_loss", "dlm_acc", "dialogue_loss"} <= set(d_logs)
    assert "nsp_loss" not in d_logs and "mlm_loss" not in d_logs
    assert d_counts["dlm_loss"] == 3 and d_counts["dialogue_mlm_loss"] == 6
    torch.testing.assert_close(d_total, d_logs["dialogue_mlm_loss"] + d_logs["dlm_loss"])
    torch.testing.assert_close(t_total, t_logs["mlm_loss"] + t_logs["nsp_loss"])
    torch.testing.assert_close(j_total, t_total + d_total)
    torch.testing.assert_close(j_logs["loss"], j_total)
    assert j_logs["dlm_loss"] == d_logs["dlm_loss"] and j_logs["mlm_loss"] == t_logs["mlm_loss"]


def test_role_ids_reach_the_embedding(compose_pretrain):
    module = _module(compose_pretrain)
    batch = _batch(True, module.embedding.vocab_size)
    with torch.no_grad():
        first = module(batch)[0]
        flipped = module(DialogueBatch({**batch, "role_ids": 1 - batch["role_ids"]}))[0]
    assert not torch.allclose(first, flipped)


def test_the_ernie_recipe_composes_with_dlm(compose_pretrain):
    cfg = compose_pretrain("experiment=ernie")
    assert validate_pretrain(cfg) == ["mlm", "nsp", "dlm"]
    assert cfg.data.dialogue.corpus == "bundled:chatterbot" and cfg.data.dialogue.fake_rate == 0.5
    assert cfg.embedding._target_.endswith("RoleEmbeddings")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("objective=[mlm,nsp,dlm]",),
         r"objective.dlm needs the batch keys \['dialogue_label', 'role_ids'\].*Fix: add dialogue "
         r"data, data.dialogue.corpus=bundled:chatterbot.*embedding=role"),
        (("experiment=ernie", "data.dialogue.corpus=null"), r"objective.dlm.*data.dialogue.corpus"),
        (("experiment=ernie", "embedding=bert"), r"no role table. Fix: add embedding=role"),
        (("experiment=ernie", "objective=[nsp]"), r"none of objective=\['nsp'\].*Fix: add dlm"),
        (("experiment=ernie", "data.dialogue.schedule=sometimes"), r"data.dialogue.schedule"),
        (("experiment=ernie", "data.dialogue.every=1"), r"data.dialogue.every=1.*>= 2"),
        (("experiment=ernie", "data.dialogue.fake_rate=1.5"), r"data.dialogue.fake_rate"),
        (("experiment=ernie", "data.dialogue.patterns=[QQQ]"), r"data.dialogue.patterns"),
        (("experiment=ernie", "data.dialogue.batch_size=0"), r"data.dialogue.batch_size"),
    ],
)  # fmt: skip
def test_dlm_refusals_at_compose_time(compose_pretrain, overrides, message):
    with pytest.raises(ClozelabError, match=message):
        validate_pretrain(compose_pretrain(*overrides))


def test_joint_schedule_and_mlm_only_dialogue_are_accepted(compose_pretrain):
    assert validate_pretrain(compose_pretrain("experiment=ernie", "data.dialogue.schedule=joint"))
    cfg = compose_pretrain("experiment=ernie", "objective=[mlm,nsp]")  # MLM on dialogue batches
    assert validate_pretrain(cfg) == ["mlm", "nsp"]
