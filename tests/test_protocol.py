"""The protocol a run records (budget, model, data, suite) and the token budget's LR schedule."""

from __future__ import annotations

import csv
from pathlib import Path

from omegaconf import OmegaConf

from clozelab.pretrain import pretrain
from clozelab.training.protocol import budget_kind, protocol


def test_token_budget_schedule_spans_the_run_on_short_sentence_pairs(compose_pretrain):
    """SENTENCE-PAIR inputs fill a fraction of max_seq_length: the LR schedule is sized from the
    mean sequence length, so it decays to the end of the token budget instead of sitting at 0
    for most of the run (as a max_seq_length-sized estimate would), and NSP trains on them."""
    cfg = compose_pretrain("trainer.max_steps=-1", "trainer.max_tokens=3000",
                           "data.instances=sentence_pair", "initial_validation=false")  # fmt: skip
    metrics = pretrain(cfg)
    assert metrics["status"] == "completed" and metrics["tokens_seen"] >= 3000
    assert "val/nsp_loss" in metrics
    per_step = metrics["tokens_seen"] / metrics["steps"]
    assert per_step < 0.6 * cfg.data.batch_size * cfg.data.max_seq_length  # short pairs
    rows = list(csv.DictReader((Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open()))
    lrs = [float(r["lr-AdamW/pg1"]) for r in rows if r.get("lr-AdamW/pg1")]
    assert len(lrs) >= metrics["steps"] - 1
    assert sum(lr == 0.0 for lr in lrs) <= 1  # at most the very last step
    assert lrs[-1] < 0.3 * max(lrs)  # and it did decay
    recorded = metrics["protocol"]
    assert recorded["budget"] == "tokens" and recorded["max_tokens"] == 3000
    assert recorded["data"]["instances"] == "sentence_pair" and recorded["suite"] is None
    assert recorded["model"]["hidden_size"] == 32 and recorded["seed"] == cfg.seed


def test_protocol_names_the_budgets_and_the_suite():
    def trainer(**kw):
        return OmegaConf.create({"max_steps": -1, "max_tokens": None, "max_time": None, **kw})

    assert budget_kind(trainer(max_tokens=10)) == "tokens"
    assert budget_kind(trainer(max_steps=5, max_time="00:00:01:00")) == "steps+time"
    assert budget_kind(trainer()) == "epochs"
    cfg = OmegaConf.create({
        "trainer": trainer(max_tokens=10), "seed": 3,
        "model": {"num_layers": 2, "hidden_size": 8, "num_heads": 2, "intermediate_size": 16},
        "data": {"corpus": "c", "instances": "segment_pair", "max_seq_length": 64, "batch_size": 4},
        "eval": {"suite": "bundled", "tasks": ["polarity"], "seeds": [1], "mode": "finetune"},
        "sweep_meta": {"name": "masking_rate"},
    })  # fmt: skip
    recorded = protocol(cfg)
    assert recorded["suite"] == "bundled" and recorded["eval_tasks"] == ["polarity"]
    assert recorded["eval_seeds"] == [1] and recorded["sweep"] == "masking_rate"
    assert recorded["model"]["name"] is None and recorded["choices"] == {}  # outside Hydra
