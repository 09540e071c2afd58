"""``clozelab export`` of a tiny real ERNIE 2.0 run (``experiment=ernie2``: task embedding,
continual schedule, five objectives): an HF ``ErnieForMaskedLM`` folder with the run's outputs for
every task id, the four task heads HF has no slot for kept beside it and said so, and the folder
loading back into clozelab."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from clozelab.cli import main
from clozelab.core.errors import ClozelabError
from clozelab.data.tokenizer import load_tokenizer
from clozelab.pretrain import pretrain
from clozelab.training.hf_export import HEADS_FILE, HEADS_KEY, NOTES_README, TASK_KEY
from clozelab.training.loading import build_run_components, init_components, load_checkpoint

transformers = pytest.importorskip("transformers")

ERNIE2 = ("experiment=ernie2", "schedule.stages.0.until_steps=2", "schedule.stages.1.until_steps=4",
          "corruption.level_probs.phrase=0.0", "corruption.level_probs.basic=0.7",
          "trainer.limit_val_batches=1", "initial_validation=false", "trainer.max_steps=5",
          "trainer.val_check_interval=5")  # fmt: skip
TASK_HEADS = ["capitalization", "sentence_distance", "sentence_reorder", "token_document"]


def test_an_ernie2_run_exports_to_hf_ernie_and_loads_back(compose_pretrain, tmp_path, capsys):
    import clozelab

    cfg = compose_pretrain(*ERNIE2)
    assert pretrain(cfg)["status"] == "completed"
    run = tmp_path / "run"
    assert (run / "hf" / "model.safetensors").is_file()  # the run's own export, no longer skipped
    out = tmp_path / "exported"
    main(["export", str(run), str(out)])
    assert "exported" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text("utf-8"))
    assert config["architectures"] == ["ErnieForMaskedLM"]  # no 2-way NSP head in this run
    assert config["use_task_id"] is True and config["task_type_vocab_size"] == 8
    assert config["hidden_act"] == "relu"
    hf, info = transformers.ErnieForMaskedLM.from_pretrained(
        out, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    hf.eval()

    tok = transformers.AutoTokenizer.from_pretrained(out)
    batch = tok(["the old river crosses the city", "a painter"], ["a king founded it", ""],
                padding=True, return_tensors="pt")  # fmt: skip
    real = batch["attention_mask"].bool()
    model = clozelab.load(run)  # no task ids: row 0, as HF without task_type_ids
    with torch.no_grad():
        ref = hf(**batch, output_hidden_states=True)
        states = model.encode(**batch).hidden_states
        logits = model.mlm_logits(**batch)
    for ours, theirs in zip(states, ref.hidden_states, strict=True):
        assert (ours - theirs)[real].abs().max() <= 1e-4
    assert (logits - ref.logits)[real].abs().max() <= 1e-4

    loaded = load_checkpoint(run)  # the run's own components: task ids as the schedule gives
    mlm = loaded.objectives["mlm"].eval()
    embedding, encoder = loaded.embedding.eval(), loaded.encoder.eval()
    at = {}
    for task in (0, 2, 4):  # mlm, token_document, sentence_reorder
        ids = torch.full((2,), task)
        with torch.no_grad():
            x = embedding(batch["input_ids"], batch["token_type_ids"], task_ids=ids)
            hidden = encoder(x, batch["attention_mask"]).last_hidden_state
            theirs = hf(**batch, task_type_ids=ids[:, None].expand_as(batch["input_ids"])).logits
            at[task] = model.encode(**batch, task_ids=task).last_hidden_state  # the API, an int
            api_logits = model.mlm_logits(**batch, task_ids=ids)
        assert torch.equal(at[task], hidden)  # the embedding's own forward at that task
        assert (mlm.logits(hidden, embedding) - theirs)[real].abs().max() <= 1e-4
        assert (api_logits - theirs)[real].abs().max() <= 1e-4
    assert torch.equal(at[0], states[-1])  # no task ids: task 0
    assert not torch.allclose(at[0][real], at[2][real], atol=1e-4)
    assert not torch.allclose(at[2][real], at[4][real], atol=1e-4)

    heads = load_file(out / HEADS_FILE)
    assert sorted({key.split(".")[0] for key in heads}) == TASK_HEADS
    for key, value in heads.items():
        name, param = key.split(".", 1)
        assert torch.equal(value, loaded.objectives[name].get_parameter(param)), key
    readme = (out / NOTES_README).read_text("utf-8")
    assert ", ".join(TASK_HEADS) in config[HEADS_KEY] and HEADS_FILE in readme
    ids = "mlm=0, capitalization=1, token_document=2, sentence_distance=3, sentence_reorder=4"
    assert ids in config[TASK_KEY] and ids in readme

    back = clozelab.load(out)  # the HF ERNIE folder, task table included
    assert back.load_report == {"missing": [], "unexpected": []}
    with torch.no_grad():
        assert torch.allclose(back.mlm_logits(**batch), logits, atol=1e-5)
        again = back.encode(**batch, task_ids=torch.full((2,), 2)).last_hidden_state
    assert (again - at[2])[real].abs().max() <= 1e-5
    with pytest.raises(ClozelabError, match=r"no NSP head.*an HF ErnieForPreTraining directory"):
        back.nsp_logits(**batch)  # an ErnieForMaskedLM export; before: 'BertForPreTraining'
    _, fresh, fresh_encoder, fresh_objectives = build_run_components(run)  # model.init_from=out
    tokenizer = load_tokenizer(run / "tokenizer")
    report = init_components(str(out), fresh, fresh_encoder, fresh_objectives, tokenizer)
    assert report == {"missing": [], "unexpected": []}
    assert torch.equal(fresh.task_embeddings.weight, embedding.task_embeddings.weight)
