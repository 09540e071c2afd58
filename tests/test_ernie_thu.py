"""ERNIE-THU end to end on a corpus without links (a gazetteer names the entities), resume
exactness, and the reloaded model with and without entity inputs."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
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
