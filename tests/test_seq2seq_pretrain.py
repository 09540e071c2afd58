"""Encoder-decoder pre-training end to end (tiny T5 and BART on the generated corpus), resume,
and the compose-time refusals of impossible pairs. The batches come from the test-only builder
in seq2seq_batches.py (contract keys), independent of the corruption presets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from seq2seq_batches import TARGET

from clozelab.core.errors import ClozelabError
from clozelab.pretrain import pretrain
from clozelab.training.validate import validate_pretrain

LAYOUTS = {
    "t5": ("embedding=t5", "encoder=t5", "decoder=t5"),
    "bart": ("embedding=bart", "encoder=post_ln", "decoder=bart", "model.layer_norm_eps=1e-5"),
}


def _with_test_batches(cfg, extra_vocab: int = 0):
    with open_dict(cfg):
        cfg.corruption = OmegaConf.create(
            {"_target_": TARGET, "rate": 0.15, "extra_vocab": extra_vocab}
        )
    return cfg


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_tiny_encoder_decoder_pretrains_and_resumes(compose_pretrain, tmp_path, kind):
    run = tmp_path / kind
    overrides = (*LAYOUTS[kind], "objective=[seq2seq]", f"paths.output_dir={run}")
    first = _with_test_batches(compose_pretrain(*overrides, "trainer.max_steps=3"), 4)
    metrics = pretrain(first)
    assert metrics["status"] == "completed" and metrics["steps"] == 3
    assert math.isfinite(metrics["train/seq2seq_loss"])
    assert metrics["val/seq2seq_loss"] < metrics["initial/val/seq2seq_loss"]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    rows = state["embedding.word_embeddings.weight"].shape[0]
    assert rows == metrics["vocab_size"] + 4  # the tokenizer's ids plus the sentinels
    assert any(k.startswith("objectives.seq2seq.decoder.layers.1.cross_attention") for k in state)
    resumed = pretrain(_with_test_batches(compose_pretrain(*overrides), 4))  # max_steps=6
    assert resumed["steps"] == 6 and resumed["status"] == "completed"
    assert resumed["tokens_seen"] > metrics["tokens_seen"]


def test_seq2seq_objective_without_a_decoder_is_refused(compose_pretrain):
    cfg = _with_test_batches(compose_pretrain("objective=[seq2seq]"))
    with pytest.raises(ClozelabError, match="decoder=t5"):
        validate_pretrain(cfg)


def test_seq2seq_batches_on_an_encoder_only_model_are_refused(compose_pretrain):
    cfg = _with_test_batches(compose_pretrain("objective=[mlm]"))
    with pytest.raises(ClozelabError, match="encoder-only"):
        validate_pretrain(cfg)


def test_seq2seq_objective_without_target_keys_is_refused(compose_pretrain):
    cfg = compose_pretrain(*LAYOUTS["t5"], "objective=[seq2seq]", "corruption=mask")
    with pytest.raises(ClozelabError, match=r"labels.*seq2seq corruption"):
        validate_pretrain(cfg)


def test_decoder_sizes_follow_the_model_group(compose_pretrain):
    cfg = compose_pretrain(*LAYOUTS["t5"], "objective=[seq2seq]", "model.num_layers=3")
    assert cfg.objective.seq2seq.decoder.num_layers == 3
    assert cfg.objective.seq2seq.decoder.hidden_size == cfg.model.hidden_size
    assert Path(cfg.paths.output_dir).name == "run"


def test_a_decoder_no_objective_runs_is_refused(compose_pretrain):
    cfg = compose_pretrain("decoder=t5", "objective=[mlm]")
    with pytest.raises(ClozelabError, match="runs a decoder"):
        validate_pretrain(cfg)
