"""Every recipe in experiments/ runs end to end in a tiny smoke test; refusals at compose time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import clozelab
from clozelab.core.errors import ClozelabError
from clozelab.pretrain import pretrain
from clozelab.training.validate import validate_pretrain

SMOKE = ("trainer.max_steps=2", "trainer.val_check_interval=2", "initial_validation=false",
         "eval.suite=null")  # fmt: skip

ERNIE_THU = ("data.corpus=bundled:wikipedia", "data.max_documents=12", "encoder.transe.epochs=2",
             "encoder.entity_dim=16", "encoder.entity_heads=2")  # fmt: skip
# Per recipe: overrides that fit the tiny model (H=32), and the objectives whose losses it logs.
RECIPES = {
    "bert": ((), ("mlm", "nsp")),
    "roberta": ((), ("mlm",)),
    "albert": (("embedding.embedding_size=16",), ("mlm", "sop")),
    "spanbert": ((), ("mlm", "sbo")),
    "electra": ((), ("rtd",)),
    "gpt_baseline": ((), ("lm",)),
    "elmo_baseline": ((), ("lm",)),
    "ernie": ((), ("mlm", "nsp", "dlm")),
    # two steps: two stages (the recipe's three need a longer run), then every objective
    "ernie2": (
        (
            "schedule.mix=joint",
            "embedding=bert",
            "schedule.stages=[{until_steps: 1, "
            "objectives: [mlm, capitalization, token_document]}, {objectives: "
            "[sentence_distance, sentence_reorder]}]",
        ),
        ("mlm", "capitalization", "token_document", "sentence_distance", "sentence_reorder"),
    ),
    # the real Wikipedia sample: its link anchors are the entity mentions
    "ernie_thu": (ERNIE_THU, ("mlm", "nsp", "dea")),
    "xlnet": ((), ("plm",)),
    "t5": ((), ("seq2seq",)),
    "bart": ((), ("seq2seq",)),
    "mass": ((), ("seq2seq",)),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_end_to_end(compose_pretrain, name):
    overrides, objectives = RECIPES[name]
    cfg = compose_pretrain(f"experiment={name}", *SMOKE, *overrides)
    metrics = pretrain(cfg)
    assert metrics["status"] == "completed" and metrics["steps"] == 2
    assert sorted(metrics["objectives"]) == sorted(objectives)
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    for objective in objectives:
        for split in ("train", "val"):
            key = f"{split}/{objective}_loss"
            assert key in saved and math.isfinite(saved[key]) and saved[key] > 0, key
    model = clozelab.load(cfg.paths.output_dir)  # the run reloads with every variant's weights
    assert not model.load_report["missing"]
    ids = torch.tensor([[2, 20, 21, 22, 3]])
    out = model.encode(ids).last_hidden_state
    assert out.shape == (1, 5, cfg.model.hidden_size) and torch.isfinite(out).all()


def test_albert_shares_layers_and_factorizes(compose_pretrain):
    from clozelab.data.tokenizer import train_wordpiece
    from clozelab.training.components import build_components

    cfg = compose_pretrain("experiment=albert", "embedding.embedding_size=16")
    embedding, encoder, objectives, _ = build_components(cfg, train_wordpiece(["a b c"] * 5, 120))
    assert len(encoder.layers) == 1 and encoder.num_layers == cfg.model.num_layers
    assert embedding.word_embeddings.weight.shape[1] == 16
    assert objectives["mlm"].transform.dense.out_features == 16


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("corruption=mask", "objective=[mlm,sbo]", "data.instances=full_sentences"),
         r"span_bounds.*corruption=span"),
        (("objective=[mlm,nsp]", "data.instances=full_sentences"), r"nsp.*segment_pair"),
        (("objective=[mlm,sop]", "data.instances=doc_sentences"), r"sop.*sentence_order"),
        (("objective=[mlm,sop]", "data.instances=segment_pair"), r"sop.*sentence_order"),
        (("objective=[mlm,nsp]", "data.instances=sentence_order"), r"nsp.*segment_pair"),
        (("objective=[deletion]",), r"deletion_labels.*corruption=delete"),
        (("experiment=albert", "objective=[mlm,sop,sbo]", "corruption=span"),
         r"objective.sbo.embedding_size.*embedding.embedding_size"),
        (("embedding=factorized",), r"objective.mlm.embedding_size=\$\{embedding"),
        (("objective=[order]", "corruption=delete"), r"order_labels.*corruption=reorder"),
        (("objective=[rtd]", "data.instances=full_sentences"), r"random_prob.*electra"),
        (("experiment=electra", "corruption=delete"), r"mlm_labels"),
        (("experiment=electra", "corruption=span_delete"), r"steps\[0\].random_prob"),
        (("experiment=electra", "corruption=span_delete", "+corruption.steps.0.random_prob=0.0",
          "+corruption.steps.0.mask_prob=0.85", "+corruption.steps.0.keep_prob=0.15"),
         r"deletes or reorders"),
        (("objective=[plm]", "corruption=plm"), r"encoder=xlnet"),
        (("experiment=xlnet", "encoder.mem_len=16"), r"encoder.mem_len=0"),
        (("embedding=word", "encoder=xlnet", "encoder.mem_len=8", "data.instances=full_sentences",
          "objective=[mlm]"), r"encoder.mem_len.*independent.*encoder.mem_len=0"),
        (("experiment=xlnet", "corruption=mask"), r"corruption=plm"),
        (("experiment=xlnet", "objective=[mlm]"), r"mlm_labels"),
    ],
)  # fmt: skip
def test_impossible_combinations_are_refused_at_compose_time(compose_pretrain, overrides, message):
    cfg = compose_pretrain(*overrides)
    with pytest.raises(ClozelabError, match=message):
        validate_pretrain(cfg)


def _train_losses(run_dir: Path) -> dict[int, float]:
    import csv

    with open(run_dir / "csv" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/loss")]
    return {int(r["step"]): float(r["train/loss"]) for r in rows}


def test_xlnet_recipe_is_deterministic(compose_pretrain, tmp_path):
    """The permutation targets are drawn from (seed, epoch, sample): the same run twice gives the
    same losses (resume: tests/reliability/test_resume.py)."""
    base = ("experiment=xlnet", "initial_validation=false", "eval.suite=null",
            "trainer.max_steps=3", "trainer.val_check_interval=3")  # fmt: skip
    runs = {}
    for name in ("a", "b"):
        metrics = pretrain(compose_pretrain(*base, f"paths.output_dir={tmp_path / name}"))
        runs[name] = (_train_losses(tmp_path / name), metrics["val/plm_loss"])
    assert runs["a"] == runs["b"] and len(runs["a"][0]) == 3
