"""ERNIE-THU end to end on a corpus without links (a gazetteer names the entities), resume
exactness, and the reloaded model with and without entity inputs."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from helpers import SHARED_DATA, TINY
from omegaconf import OmegaConf

import clozelab
from clozelab.pretrain import pretrain
from clozelab.training.module import PretrainModule

NAMES = ("river", "city", "music", "history", "mountain", "island", "ocean", "planet", "library")
RUN = ("experiment=ernie_thu", "data.entities=gazetteer", "encoder.transe.epochs=3",
       "encoder.entity_dim=16", "encoder.entity_heads=2", "initial_validation=false",
       "eval.suite=null", "trainer.val_check_interval=4", "trainer.limit_val_batches=1",
       "callbacks.checkpoint_every_n_steps=2")  # fmt: skip


@pytest.fixture(scope="module")
def gazetteer(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gazetteer") / "names.txt"
    path.write_text("".join(f"{name.title()}\tTHING\n" for name in NAMES), "utf-8")
    return path


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu")["state_dict"]


@pytest.mark.slow  # three tiny runs (~30 s on 2 busy cores); the recipe smoke test is fast
def test_gazetteer_corpus_trains_resumes_exactly_and_reloads(
    compose_pretrain, gazetteer, tmp_path, monkeypatch
):
    straight = compose_pretrain(*RUN, f"data.gazetteer={gazetteer}", "trainer.max_steps=6")
    metrics = pretrain(straight)
    assert metrics["status"] == "completed" and metrics["steps"] == 6
    run = Path(straight.paths.output_dir)
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.encoder.num_entities == len(NAMES)  # recorded: a rebuild has the same table
    final = json.loads((run / "metrics.json").read_text())
    assert final["val/dea_loss"] > 0 and final["val/mlm_loss"] > 0

    other = tmp_path / "resumed"

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step == 3:  # SIGTERM while step 4 runs: checkpoint, exit
            os.kill(os.getpid(), signal.SIGTERM)

    again = compose_pretrain(*RUN, f"data.gazetteer={gazetteer}", "trainer.max_steps=6",
                             f"paths.output_dir={other}")  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr(PretrainModule, "on_train_batch_start", on_train_batch_start, raising=False)
        with pytest.raises(SystemExit):
            pretrain(again)
    assert torch.load(other / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert pretrain(again)["steps"] == 6  # the same command again resumes
    want, got = _weights(run), _weights(other)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key

    model = clozelab.load(run)
    assert not model.load_report["missing"]
    table = model.encoder.entity_embeddings.weight
    assert table.shape == (len(NAMES), 16) and not table.requires_grad
    ids = torch.tensor([[2, 20, 21, 22, 23, 3]])
    plain = model.encoder(model.embedding(ids), None).last_hidden_state
    links = torch.tensor([[-1, 1, -1, 4, -1, -1]])
    fused = model.encoder(model.embedding(ids), None, entity_links=links).last_hidden_state
    assert torch.isfinite(plain).all() and not torch.allclose(plain, fused)


@pytest.fixture(scope="module")
def wiki_run(tmp_path_factory, cache_dir, text_corpus):
    """A tiny ernie_thu run on the real Wikipedia sample (its entities: linked articles)."""
    from hydra import compose, initialize_config_dir
    from test_recipes import ERNIE_THU

    from clozelab.core.config import conf_dir, register_overlays

    register_overlays()
    run = tmp_path_factory.mktemp("ernie_thu_wiki") / "run"
    overrides = [*TINY, *ERNIE_THU, "experiment=ernie_thu", "trainer.max_steps=2",
                 "initial_validation=false", "eval.suite=null", f"paths.output_dir={run}",
                 f"paths.cache_dir={cache_dir}"]  # fmt: skip
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        pretrain(compose("pretrain", overrides=overrides))
    return run


def _conll(tmp_path: Path, n: int) -> Path:
    """The first ``n`` sentences of CoNLL-2003 train and dev (../shared/data)."""
    source = SHARED_DATA / "conll2003"
    if not (source / "dev.txt").is_file():
        pytest.skip("CoNLL-2003 is not in ../shared/data")
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("train.txt", "dev.txt"):
        blocks = (source / name).read_text("utf-8").split("\n\n")
        (tmp_path / name).write_text("\n\n".join(blocks[: n + 1]) + "\n", "utf-8")
    return tmp_path


@pytest.mark.slow  # a tiny pre-training run and two fine-tunings (~45 s on 2 busy cores)
def test_fine_tuning_links_conll_mentions_and_runs_with_or_without_them(wiki_run, tmp_path):
    from clozelab.training.evaluation import load_task, run_task
    from clozelab.training.loading import load_backbone

    backbone = load_backbone(wiki_run)
    assert backbone.linker is not None and (wiki_run / "entities.txt").is_file()
    data_dir = _conll(tmp_path / "conll", 200)
    small = {
        "path": str(data_dir),
        "epochs": 1,
        "batch_size": 8,
        "max_seq_length": 64,
        "max_train_examples": 48,
        "max_eval_examples": 16,
    }
    task = OmegaConf.merge(load_task("conll2003"), small)
    from clozelab.tasks.base import task_for

    kind = task_for(task)
    data = kind.encode(kind.read(None), backbone)
    names = (wiki_run / "entities.txt").read_text("utf-8").split("\n")
    mentions = []
    for feature in data.train + data.validation:
        for position, entity in enumerate(feature["entity_links"]):
            if entity >= 0:
                token = backbone.tokenizer.hf.id_to_token(feature["input_ids"][position])
                mentions.append((token, names[entity]))
    print(f"\nCoNLL mentions linked to the run's entities: {mentions[:12]}")
    assert len(mentions) >= 3  # the run's entities: the links of 12 Wikipedia articles
    assert all(name.casefold().startswith(token.casefold()) for token, name in mentions)
    seeds = [1]
    fused = run_task(task, str(wiki_run), seeds=seeds, eval_dir=tmp_path / "with")
    plain = run_task(OmegaConf.merge(task, {"entity_inputs": False}), str(wiki_run), seeds=seeds,
                     eval_dir=tmp_path / "without")  # fmt: skip
    for result in (fused, plain):
        assert result["metric"] == "entity_f1" and 0.0 <= result["value"] <= 1.0
