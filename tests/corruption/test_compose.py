"""Composition (shared budget, composed presets, validation) and BART sentence permutation."""

from __future__ import annotations

import math

import torch
from omegaconf import OmegaConf

from clozelab.core.config import build, conf_dir
from clozelab.corruption.compose import Compose
from clozelab.corruption.delete import Deletion
from clozelab.corruption.masking import UnitMasking
from clozelab.corruption.reorder import Reorder
from clozelab.corruption.span import SpanMasking

from .test_schemes import CLS, PAD, SEP, TOK, gen, make_batch


def total_fraction(batch, out) -> float:
    n = float((~batch["special_tokens_mask"].bool()).sum())
    deleted = float(out["deleted_count"].sum()) if "deleted_count" in out else 0.0
    return (float(out["corrupted_mask"].sum()) + deleted) / n


def test_compose_total_hits_the_shared_budget():
    # Without rescaling, deletion would take 20% of the 70% left: 0.3 + 0.14 = 0.44, not 0.5.
    steps = [
        UnitMasking(unit="token", budget="bernoulli", rate=0.3, **TOK),
        Deletion(rate=0.2, pad_token_id=PAD, **TOK),
    ]
    corruption = Compose(steps)
    assert corruption.rates == [0.3, 0.2]
    assert math.isclose(steps[1].rate, 0.2 / 0.7)
    batch = make_batch(b=256)
    out = corruption(batch, gen(0))
    n = int((~batch["special_tokens_mask"].bool()).sum())
    assert abs(total_fraction(batch, out) - 0.5) < 5 * math.sqrt(0.25 / n)
    assert abs(float(out["corrupted_mask"].sum()) / n - 0.3) < 5 * math.sqrt(0.21 / n)


def test_compose_exact_budgets_are_not_rescaled_and_sum_exactly():
    # span: ceil(0.1 n) of the row, exact; then whole-word masking with BERT's exact budget over
    # the whole row (not rescaled); single-piece words make the second budget exact too.
    batch = make_batch(b=32, single_piece=True)
    span = SpanMasking(rate=0.1, replace_distribution="uniform", **TOK)
    words = UnitMasking(rate=0.05, budget="exact", **TOK)
    out = Compose([span, words])(batch, gen(1))
    assert span.rate == 0.1 and words.rate == 0.05  # first step and exact budgets: as configured
    n = (~batch["special_tokens_mask"].bool()).sum(-1).double()
    n_real = batch["attention_mask"].sum(-1).double()
    expected = torch.ceil(n * 0.1) + torch.round(n_real * 0.05)
    assert torch.equal(out["corrupted_mask"].sum(-1).double(), expected)


def test_reorder_is_outside_the_budget():
    steps = [UnitMasking(budget="bernoulli", rate=0.6, **TOK), Reorder(rate=0.5, **TOK)]
    corruption = Compose(steps)  # 0.6 + 0.5 >= 1 would be refused if reorder counted
    assert steps[1].rate == 0.5 and corruption.rates == [0.6, 0.0]


def test_span_delete_preset_validates_runs_and_hits_the_budget(compose_pretrain):
    from clozelab.training.validate import validate_pretrain

    cfg = compose_pretrain("corruption=span_delete")
    assert cfg.corruption.steps[1]["_target_"].endswith("Deletion")
    validate_pretrain(cfg)  # MLM on a Compose: produces_for gives mlm_labels
    keys = Compose.produces_for(cfg.corruption)
    assert {"mlm_labels", "span_bounds", "deletion_labels"} <= set(keys)

    node = OmegaConf.load(conf_dir() / "corruption" / "span_delete.yaml")
    node.steps[0].replace_distribution = "uniform"  # no shards here to count unigrams from
    corruption = build(node, "corruption", corpus=None, pad_token_id=PAD, **TOK)
    batch = make_batch(b=256)
    out = corruption(batch, gen(0))
    n = int((~batch["special_tokens_mask"].bool()).sum())
    assert abs(total_fraction(batch, out) - 0.15) < 5 * math.sqrt(0.15 * 0.85 / n)
    assert {"mlm_labels", "span_bounds", "deletion_labels", "input_ids"} <= set(out)
    special = out["input_ids"] == SEP
    assert not (out["corrupted_mask"] & special).any()


def test_sentence_permutation_moves_exactly_ceil_np_sentences():
    # one segment of 10 sentences of 12 tokens: ceil(10 * 0.15) = 2 sentences are permuted, so a
    # row has 0 (identity draw) or 2 sentences out of place; a per-sentence Bernoulli gives 3+.
    b, t = 400, 122
    ids = torch.randint(5, 500, (b, t), generator=gen(3))
    ids[:, 0], ids[:, -1] = CLS, SEP
    special = torch.zeros(b, t, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    sentence = ((torch.arange(t) - 1) // 12).expand(b, t).masked_fill(special, -1)
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones(b, t, dtype=torch.long),
        "special_tokens_mask": special.long(),
        "sentence_ids": sentence,
    }
    out = Reorder(mode="sentence", rate=0.15, **TOK)(batch, gen(0))
    # [B, 10]: whether the sentence in each slot moved
    moved = (out["sentence_ids"][:, 1:-1:12] != sentence[:, 1:-1:12]).sum(-1)
    assert set(moved.tolist()) == {0, 2}
    assert abs(float((moved == 2).float().mean()) - 0.5) < 0.1  # the 2-cycle vs the identity
    # rate 0.35 -> ceil(3.5) = 4 sentences: never more than 4 out of place
    out = Reorder(mode="sentence", rate=0.35, **TOK)(batch, gen(1))
    moved = (out["sentence_ids"][:, 1:-1:12] != sentence[:, 1:-1:12]).sum(-1)
    assert int(moved.max()) == 4 and set(moved.tolist()) <= {0, 2, 3, 4}
