"""ERNIE 2.0's task embedding is HF ERNIE's ``task_type_embeddings`` (``use_task_id``): both add
the task row (row 0 without task ids) to word + position + segment before the LayerNorm, so a
run with ``embedding=task`` exports as an exact HF ``ErnieForPreTraining`` and HF ERNIE
directories load back (random-init small models, SPECS §15 / §20)."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from safetensors.torch import load_file

from clozelab.model.embeddings import BertEmbeddings
from clozelab.model.embeddings_variants import TaskEmbeddings
from clozelab.model.encoder import TransformerEncoder
from clozelab.model.hf import embedding_from_hf_config, from_hf_state_dict, to_hf_state_dict
from clozelab.objectives.mlm import MLM
from clozelab.objectives.nsp import NSP
from clozelab.objectives.sentence_distance import SentenceDistance
from clozelab.training.hf_export import (
    HEADS_FILE,
    HEADS_KEY,
    NOTES_README,
    TASK_KEY,
    write_run_hf_dir,
)
from clozelab.training.loading import load_checkpoint
from tests.helpers import perturbed

transformers = pytest.importorskip("transformers")

V, H, TASKS, T = 60, 16, 4, 10
TOL = 1e-4


def _ours():
    torch.manual_seed(0)
    return perturbed(
        TaskEmbeddings(V, H, num_tasks=TASKS, max_position_embeddings=32),
        TransformerEncoder(H, 2, 2, 32),
        MLM(H, V),
        NSP(H),
    )


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, V, (3, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    return ids, mask, types


#: task ids as clozelab takes them ([B] or [B, T]; None: row 0) and as HF takes them ([B, T])
TASK_CASES = {
    "none": (None, None),
    "task0": (torch.tensor([0, 0, 0]), torch.zeros(3, T, dtype=torch.long)),
    "per_sequence": (torch.tensor([2, 3, 1]), torch.tensor([2, 3, 1])[:, None].expand(3, T)),
    "per_token": (torch.arange(3 * T).reshape(3, T) % TASKS,) * 2,
}


def _compare(hf, emb, enc, mlm, nsp, task_ids, task_type_ids):
    ids, mask, types = _batch()
    with torch.no_grad():
        out = enc(emb(ids, types, task_ids=task_ids), mask, output_hidden_states=True)
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types,
                 task_type_ids=task_type_ids, output_hidden_states=True)  # fmt: skip
        logits = mlm.logits(out.last_hidden_state, emb)
    real = mask.bool()
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        assert (ours - theirs)[real].abs().max() <= TOL
    assert (logits - ref.prediction_logits)[real].abs().max() <= TOL
    if nsp is not None:
        assert (nsp.logits(out.last_hidden_state) - ref.seq_relationship_logits).abs().max() <= TOL
    return ref.prediction_logits


def test_an_ernie2_export_is_hf_ernie_for_pretraining_with_the_same_outputs(tmp_path, caplog):
    emb, enc, mlm, nsp = _ours()
    (distance,) = perturbed(SentenceDistance(H))
    objectives = {"mlm": mlm, "nsp": nsp, "sentence_distance": distance}
    with caplog.at_level(logging.INFO, logger="clozelab.training.hf_export"):
        out = write_run_hf_dir(tmp_path / "hf", emb, enc, objectives, tmp_path / "no_tokenizer")
    config = json.loads((out / "config.json").read_text("utf-8"))
    assert config["model_type"] == "ernie" and config["architectures"] == ["ErnieForPreTraining"]
    assert config["use_task_id"] is True and config["task_type_vocab_size"] == TASKS
    state = load_file(out / "model.safetensors")
    assert torch.equal(state["ernie.embeddings.task_type_embeddings.weight"],
                       emb.task_embeddings.weight)  # fmt: skip
    hf, info = transformers.ErnieForPreTraining.from_pretrained(
        out, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    hf.eval()
    logits = {name: _compare(hf, emb, enc, mlm, nsp, *case) for name, case in TASK_CASES.items()}
    assert torch.equal(logits["none"], logits["task0"])  # HF: row 0 without task_type_ids
    assert not torch.allclose(logits["none"], logits["per_sequence"], atol=1e-3)  # rows differ

    # the sentence-distance head has no HF slot: kept beside the model, and said so
    heads = load_file(out / HEADS_FILE)
    assert set(heads) == {f"sentence_distance.{k}" for k, _ in distance.named_parameters()}
    assert torch.equal(heads["sentence_distance.classifier.weight"], distance.classifier.weight)
    readme = (out / NOTES_README).read_text("utf-8")
    for text in (readme, config[HEADS_KEY]):
        assert "objectives sentence_distance have no slot in HF ErnieForPreTraining" in text
        assert HEADS_FILE in text
    assert "task_type_ids" in config[TASK_KEY] and "gets task 0" in readme
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "sentence_distance" in warned[0]


def test_an_export_again_with_force_writes_each_note_once(tmp_path):
    emb, enc, mlm, _ = _ours()
    (distance,) = perturbed(SentenceDistance(H))
    for _ in range(2):
        out = write_run_hf_dir(tmp_path / "hf", emb, enc, {"mlm": mlm, "d": distance}, tmp_path)
    readme = (out / NOTES_README).read_text("utf-8")
    assert readme.count("## Heads with no HF slot") == 1 and readme.count("## Task ids") == 1
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ErnieForMaskedLM"]
    write_run_hf_dir(tmp_path / "hf", emb, enc, {"mlm": mlm}, tmp_path)  # no other head now
    assert not (out / HEADS_FILE).exists()


def _hf_ernie(tmp_path, use_task_id=True):
    config = transformers.ErnieConfig(
        vocab_size=V, hidden_size=H, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, use_task_id=use_task_id,
        task_type_vocab_size=TASKS, hidden_act="gelu",
    )  # fmt: skip
    torch.manual_seed(5)
    (hf,) = perturbed(transformers.ErnieForPreTraining(config))
    hf.save_pretrained(tmp_path / "ernie")
    return hf


def test_an_hf_ernie_directory_loads_back_with_its_task_table(tmp_path):
    hf = _hf_ernie(tmp_path)
    loaded = load_checkpoint(tmp_path / "ernie")
    assert loaded.report == {"missing": [], "unexpected": []}
    assert isinstance(loaded.embedding, TaskEmbeddings) and loaded.embedding.num_tasks == TASKS
    parts = (loaded.embedding, loaded.encoder, loaded.objectives["mlm"], loaded.objectives["nsp"])
    for part in parts:
        part.eval()
    for case in TASK_CASES.values():
        _compare(hf, *parts, *case)
    # HF -> clozelab -> HF is bitwise, the pooler included
    again = to_hf_state_dict(*parts)
    for key, value in hf.state_dict().items():
        assert torch.equal(again[key], value), key
    assert torch.equal(loaded.pooler.dense.weight, hf.ernie.pooler.dense.weight)


def test_ernie_without_task_ids_is_bert_and_body_keys_load_without_prefix(tmp_path):
    hf = _hf_ernie(tmp_path, use_task_id=False)
    embedding = embedding_from_hf_config(hf.config.to_dict())
    assert type(embedding) is BertEmbeddings
    encoder = TransformerEncoder(H, 2, 2, 32)
    report = from_hf_state_dict(hf.ernie.state_dict(), embedding, encoder)  # ErnieModel keys
    assert report == {"missing": [], "unexpected": ["pooler.dense.weight", "pooler.dense.bias"]}
    assert torch.equal(embedding.word_embeddings.weight, hf.ernie.embeddings.word_embeddings.weight)


def test_an_ernie_task_table_into_a_model_without_one_keeps_what_task_0_computes(tmp_path, caplog):
    """``model.init_from=<HF ERNIE dir>`` on a BERT run (``embedding=bert``): HF ERNIE adds task
    row 0 to every token without task ids; dropping it (as before: 'unused') shifted every
    embedding. Row 0 now goes into each segment row, so BERT computes what ERNIE does at task 0,
    and a warning says the other rows were not loaded."""
    hf = _hf_ernie(tmp_path)
    hf.eval()
    embedding, encoder = BertEmbeddings(V, H, 32), TransformerEncoder(H, 2, 2, 32)
    mlm, nsp = MLM(H, V), NSP(H)
    with caplog.at_level(logging.WARNING, logger="clozelab.model.hf"):
        report = from_hf_state_dict(hf.state_dict(), embedding, encoder, mlm, nsp)
    assert re.search(r"task row 0 .* added to each segment row.*other 3 rows", caplog.text)
    assert report == {"missing": [], "unexpected": []}
    for part in (embedding, encoder, mlm, nsp):
        part.eval()
    ids, mask, types = _batch()
    with torch.no_grad():
        ours = encoder(embedding(ids, types), mask).last_hidden_state
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)  # task 0
        logits = mlm.logits(ours, embedding)
    assert (logits - ref.prediction_logits)[mask.bool()].abs().max() <= TOL
    assert (nsp.logits(ours) - ref.seq_relationship_logits).abs().max() <= TOL


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("hidden_size"), r"not a ERNIE config.json \(no \['hidden_size'\]\)"),
        (lambda c: c.update(task_type_vocab_size=0),
         r"config.json task_type_vocab_size=0: .*use_task_id needs a task table.*Fix:"),
    ],
)  # fmt: skip
def test_a_broken_hf_ernie_config_names_its_key(tmp_path, edit, message):
    """Before: a missing size said 'only BERT and XLNet directories load here' (ERNIE ones do);
    task_type_vocab_size=0 was named embedding.num_tasks with a pre-training fix."""
    from clozelab.core.errors import ClozelabError

    _hf_ernie(tmp_path)
    path = tmp_path / "ernie" / "config.json"
    config = json.loads(path.read_text("utf-8"))
    edit(config)
    path.write_text(json.dumps(config), "utf-8")
    with pytest.raises(ClozelabError, match=message):
        load_checkpoint(tmp_path / "ernie")


def test_a_checkpoint_trained_with_another_activation_is_said_to_differ(tmp_path, caplog):
    """model.init_from=<ERNIE 2.0 export> (relu) on a default BERT run (gelu): every weight
    loads, so nothing said that the layers now compute another function."""
    from clozelab.training.loading import load_weights

    _hf_ernie(tmp_path)  # hidden_act gelu
    parts = (TaskEmbeddings(V, H, num_tasks=TASKS, max_position_embeddings=32),
             TransformerEncoder(H, 2, 2, 32, activation="relu"))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="clozelab.training.loading"):
        load_weights(tmp_path / "ernie", *parts, {}, key="model.init_from")
    assert "hidden_act is gelu, but this model's activation is relu" in caplog.text
    assert "Fix: model.activation=gelu" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clozelab.training.loading"):
        load_weights(tmp_path / "ernie", parts[0], TransformerEncoder(H, 2, 2, 32), {})
    assert "hidden_act" not in caplog.text
