"""Statistical and structural tests of every corruption scheme (SPECS §1-4, 7, 8, 10, 13), with
pinned generators."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from omegaconf import OmegaConf

from clozelab.core.batch import IGNORE_INDEX
from clozelab.core.errors import ClozelabError
from clozelab.corruption.compose import Compose
from clozelab.corruption.delete import Deletion
from clozelab.corruption.ernie import ErnieMasking
from clozelab.corruption.masking import UnitMasking, greedy_fill
from clozelab.corruption.phrases import PhraseTable
from clozelab.corruption.reorder import Reorder
from clozelab.corruption.span import NgramMasking, SpanMasking, geometric_pmf, sample_lengths

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
VOCAB = 500
TOK = {"vocab_size": VOCAB, "mask_token_id": MASK, "special_token_ids": (PAD, UNK, CLS, SEP, MASK)}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_batch(b=64, t=128, piece_prob=0.4, seed=0, pad_from=None, single_piece=False):
    """``[CLS] A [SEP] B [SEP] [PAD]..`` rows with words of 1+ pieces, entities on some words,
    sentences of 12 tokens."""
    g = gen(seed)
    ids = torch.randint(5, VOCAB, (b, t), generator=g)
    real = torch.ones(b, t, dtype=torch.bool)
    if pad_from is not None:
        real[:, pad_from:] = False
    n = real.sum(-1)
    special = torch.zeros(b, t, dtype=torch.bool)
    special[:, 0] = True
    rows = torch.arange(b)
    special[rows, n // 2] = True
    special[rows, n - 1] = True
    special |= ~real
    ids[special] = SEP
    ids[:, 0] = CLS
    ids[~real] = PAD
    cont = torch.rand(b, t, generator=g) < (0.0 if single_piece else piece_prob)
    start = ~cont | special | torch.roll(special, 1, 1)
    word = start.long().cumsum(-1)
    word = word - word[:, :1]
    word = word.masked_fill(special, -1)
    entity = torch.where((word % 6 == 1) | (word % 6 == 2), word // 6, -1).masked_fill(special, -1)
    sentence = (torch.arange(t) // 12).expand(b, t).masked_fill(special, -1)
    token_types = (torch.arange(t).expand(b, t) > (n // 2).unsqueeze(-1)).long() * real
    return {
        "input_ids": ids,
        "attention_mask": real.long(),
        "token_type_ids": token_types,
        "special_tokens_mask": special.long(),
        "word_ids": word,
        "entity_ids": entity,
        "sentence_ids": sentence,
    }


def within(observed: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(observed - p) < sigmas * math.sqrt(p * (1 - p) / n) + 1e-9


def predicted(out) -> torch.Tensor:
    return out["mlm_labels"] != IGNORE_INDEX


def all_masking():
    return {
        "whole_word": UnitMasking(**TOK),
        "whole_word_bernoulli": UnitMasking(budget="bernoulli", **TOK),
        "entity": UnitMasking(unit="entity", budget="bernoulli", **TOK),
        "token_unit": UnitMasking(unit="token", budget="exact", **TOK),
        "span": SpanMasking(replace_distribution="uniform", **TOK),
        "ngram": NgramMasking(**TOK),
        "ernie": ErnieMasking(level_probs={"basic": 0.5, "entity": 0.5}, **TOK),
    }


# --- invariants shared by every masking scheme -------------------------------------------------


@pytest.mark.parametrize("name", list(all_masking()))
def test_no_special_touched_deterministic_and_pickles(name):
    corruption = pickle.loads(pickle.dumps(all_masking()[name]))
    batch = make_batch(pad_from=100)
    out = corruption(batch, gen(7))
    special = batch["special_tokens_mask"].bool()
    assert not predicted(out)[special].any()
    assert torch.equal(out["input_ids"][special], batch["input_ids"][special])
    assert torch.equal(out["mlm_labels"][predicted(out)], batch["input_ids"][predicted(out)])
    changed = out["input_ids"] != batch["input_ids"]
    assert not (changed & ~predicted(out)).any()
    again = corruption(batch, gen(7))
    assert torch.equal(again["input_ids"], out["input_ids"])
    other = corruption(batch, gen(8))  # the next epoch's seed gives another corruption
    assert not torch.equal(other["mlm_labels"], out["mlm_labels"])
    # span_bounds (what SBO reads) only from schemes that choose multi-word spans
    assert ("span_bounds" in out) == (name in ("entity", "span", "ngram", "ernie"))
    if "span_bounds" not in out:
        return
    bounds = out["span_bounds"]
    for row in range(3):
        spans = bounds[row][bounds[row, :, 0] >= 0]
        covered = torch.zeros(batch["input_ids"].shape[1], dtype=torch.bool)
        for s, e in spans.tolist():
            covered[s : e + 1] = True
        assert torch.equal(covered, out["corrupted_mask"][row])


@pytest.mark.parametrize("name", list(all_masking()))
def test_targets_equal_originals_when_randomness_is_off(name):
    kwargs = {"mask_prob": 0.0, "random_prob": 0.0, "keep_prob": 1.0}
    cls = type(all_masking()[name])
    extra = {"unit": "entity", "budget": "bernoulli"} if name == "entity" else {}
    corruption = cls(**kwargs, **extra, **TOK)
    batch = make_batch()
    out = corruption(batch, gen(1))
    assert torch.equal(out["input_ids"], batch["input_ids"])
    assert predicted(out).any()
    assert torch.equal(out["mlm_labels"][predicted(out)], batch["input_ids"][predicted(out)])


def test_operation_split_80_10_10_per_token():
    corruption = UnitMasking(budget="bernoulli", rate=0.5, **TOK)
    batch = make_batch(b=256)
    out = corruption(batch, gen(3))
    chosen = predicted(out)
    n = int(chosen.sum())
    masked = float((out["input_ids"][chosen] == MASK).float().mean())
    replaced = float(out["replaced_mask"][chosen].float().mean())
    assert within(masked, 0.8, n) and within(replaced, 0.1, n)


def test_span_operations_are_per_merged_span():
    corruption = SpanMasking(replace_distribution="uniform", **TOK)
    batch = make_batch(b=256)
    out = corruption(batch, gen(4))
    bounds = out["span_bounds"]
    masked = out["input_ids"] == MASK
    mixed = 0
    spans = 0
    for row in range(256):
        for s, e in bounds[row][bounds[row, :, 0] >= 0].tolist():
            kinds = {bool(x) for x in masked[row, s : e + 1]}
            mixed += len(kinds) > 1
            spans += 1
    assert mixed == 0
    frac_masked = (
        float(
            sum(
                bool(masked[r, s])
                for r in range(256)
                for s, e in bounds[r][bounds[r, :, 0] >= 0].tolist()
            )
        )
        / spans
    )
    assert within(frac_masked, 0.8, spans)


# --- budgets -----------------------------------------------------------------------------------


def test_whole_word_exact_budget_and_whole_words():
    batch = make_batch(b=128, piece_prob=0.0)
    out = UnitMasking(**TOK)(batch, gen(0))
    n_real = batch["attention_mask"].sum(-1)
    k = torch.round(n_real.double() * 0.15).long()
    assert torch.equal(predicted(out).sum(-1), k)  # single-piece words: exactly K
    batch = make_batch(b=128, piece_prob=0.5)
    out = UnitMasking(**TOK)(batch, gen(0))
    chosen = predicted(out)
    assert (chosen.sum(-1) <= k).all() and (chosen.sum(-1) >= k - 3).all()
    words = batch["word_ids"]
    for row in range(16):  # every word is all in or all out
        for w in words[row][words[row] >= 0].unique():
            inside = chosen[row][words[row] == w]
            assert inside.all() or not inside.any()


def test_whole_word_bernoulli_fraction():
    batch = make_batch(b=256)
    out = UnitMasking(budget="bernoulli", **TOK)(batch, gen(2))
    eligible = ~batch["special_tokens_mask"].bool()
    frac = float(predicted(out)[eligible].float().mean())
    assert abs(frac - 0.15) < 0.01


def test_greedy_fill_skips_overflowing_units_and_continues():
    keys = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    lengths = torch.tensor([[2, 3, 1, 1]])
    taken = greedy_fill(keys, lengths, lengths > 0, torch.tensor([4]))
    assert taken.tolist() == [[True, False, True, True]]  # 2 + (3 skipped) + 1 + 1


def test_span_budget_is_ceil_and_exact():
    for pad_from in (None, 21, 70):
        batch = make_batch(b=64, pad_from=pad_from)
        out = SpanMasking(replace_distribution="uniform", **TOK)(batch, gen(5))
        n = (~batch["special_tokens_mask"].bool()).sum(-1).double()
        assert torch.equal(predicted(out).sum(-1), torch.ceil(n * 0.15).long())


def test_span_length_distribution_is_renormalised_not_clipped():
    pmf = geometric_pmf(0.2, 1, 10)
    assert abs(float((pmf * torch.arange(1, 11)).sum()) - 3.797) < 1e-3
    lengths = sample_lengths(pmf, 1, (200_000,), gen(0)).double()
    assert abs(float(lengths.mean()) - 3.797) < 0.03  # clipping would give 4.463
    assert float(lengths.max()) == 10.0 and float(lengths.min()) == 1.0


def test_span_lengths_in_context_follow_the_pmf():
    """Long single-piece rows at a low rate: merged spans are mostly single drawn spans."""
    batch = make_batch(b=64, t=512, single_piece=True)
    out = SpanMasking(rate=0.05, replace_distribution="uniform", **TOK)(batch, gen(6))
    b = out["span_bounds"]
    b = b[b[..., 0] >= 0]
    mean_len = float((b[:, 1] - b[:, 0] + 1).double().mean())
    assert 3.3 < mean_len < 4.3, mean_len  # 4.46+ if lengths were clipped, ~3.8 + merges
    assert int(out["span_bounds"][..., 1].max()) < 512


def test_ngram_budget_and_length_distribution():
    corruption = NgramMasking(max_predictions=None, **TOK)
    assert torch.allclose(
        corruption.pmf, torch.tensor([6 / 11, 3 / 11, 2 / 11], dtype=torch.float64)
    )
    batch = make_batch(b=128, single_piece=True)
    out = corruption(batch, gen(0))
    k = torch.round(batch["attention_mask"].sum(-1).double() * 0.15).long()
    assert torch.equal(predicted(out).sum(-1), k)  # single-piece words: the fallback fills K
    capped = NgramMasking(**TOK)(batch, gen(0))
    assert (predicted(capped).sum(-1) == 19).all()  # round(128 * .15) = 19 <= 20


def test_ngram_mean_length_at_low_rate():
    batch = make_batch(b=64, t=512, single_piece=True)
    out = NgramMasking(rate=0.05, max_predictions=None, **TOK)(batch, gen(1))
    chosen = predicted(out)
    # runs merge adjacent n-grams, so the mean run length is a bit above 1.636
    starts = chosen & ~torch.roll(chosen, 1, 1)
    mean_run = float(chosen.sum()) / float(starts.sum())
    assert 1.55 < mean_run < 1.9, mean_run


def test_entity_units_are_masked_whole():
    batch = make_batch(b=128)
    out = UnitMasking(unit="entity", budget="bernoulli", fill="none", **TOK)(batch, gen(0))
    chosen = predicted(out)
    ent = batch["entity_ids"]
    assert not chosen[ent < 0].any()
    for row in range(16):
        for e in ent[row][ent[row] >= 0].unique():
            inside = chosen[row][ent[row] == e]
            assert inside.all() or not inside.any()


def test_ernie_levels_mix_per_sequence():
    corruption = ErnieMasking(level_probs={"basic": 0.3, "phrase": 0.0, "entity": 0.7}, **TOK)
    levels = corruption.levels(20_000, gen(0))
    assert within(float((levels == 2).float().mean()), 0.7, 20_000)
    assert not (levels == 1).any()
    batch = make_batch(b=256)
    out = corruption(batch, gen(1))
    frac = float(predicted(out)[~batch["special_tokens_mask"].bool()].float().mean())
    assert abs(frac - 0.15) < 0.01
    with pytest.raises(ClozelabError, match="level_probs"):
        ErnieMasking(level_probs={"basic": 0.5, "entity": 0.6}, **TOK)


def test_prediction_rate_is_separate_from_corruption_rate():
    batch = make_batch(b=256)
    eligible = ~batch["special_tokens_mask"].bool()
    low = UnitMasking(budget="bernoulli", rate=0.4, prediction_rate=0.2, **TOK)(batch, gen(0))
    corrupted = low["corrupted_mask"]
    assert abs(float(corrupted[eligible].float().mean()) - 0.4) < 0.02
    assert abs(float(predicted(low)[eligible].float().mean()) - 0.2) < 0.02
    assert not (predicted(low) & ~corrupted).any()
    high = UnitMasking(budget="bernoulli", rate=0.1, prediction_rate=0.3, **TOK)(batch, gen(0))
    assert abs(float(predicted(high)[eligible].float().mean()) - 0.3) < 0.02


def test_unigram_replacement_follows_counts_and_needs_the_table():
    weights = torch.zeros(VOCAB)
    weights[10], weights[11] = 3.0, 1.0
    corruption = UnitMasking(
        unit="token",
        budget="bernoulli",
        rate=0.5,
        mask_prob=0.0,
        random_prob=1.0,
        keep_prob=0.0,
        replace_distribution="unigram",
        replacement_probs=weights,
        **TOK,
    )
    out = corruption(make_batch(b=128), gen(0))
    drawn = out["input_ids"][out["replaced_mask"]]
    assert set(drawn.unique().tolist()) == {10, 11}
    assert within(float((drawn == 10).float().mean()), 0.75, drawn.numel())
    missing = UnitMasking(unit="token", replace_distribution="unigram", **TOK)
    with pytest.raises(ClozelabError, match="unigram"):
        missing(make_batch(b=2), gen(0))


# --- deletion, reordering, composition ---------------------------------------------------------


def test_deletion_repacks_and_labels():
    batch = make_batch(b=32, pad_from=110)
    out = Deletion(rate=0.2, pad_token_id=PAD, **TOK)(batch, gen(0))
    for row in range(32):
        old = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        new = out["input_ids"][row][out["attention_mask"][row].bool()].tolist()
        assert len(old) - len(new) == int(out["deleted_count"][row])
        # the new row is a subsequence of the old one with every special kept
        it = iter(old)
        assert all(tok in it for tok in new)
        assert new.count(SEP) == old.count(SEP) and new[0] == CLS
        labels = out["deletion_labels"][row]
        assert int((labels == 1).sum()) >= 1 or int(out["deleted_count"][row]) == 0
        assert (labels[~out["attention_mask"][row].bool()] == IGNORE_INDEX).all()
    assert (
        abs(
            float(out["deleted_count"].sum()) / float((~batch["special_tokens_mask"].bool()).sum())
            - 0.2
        )
        < 0.03
    )


def test_deletion_label_marks_the_position_after_a_gap():
    ids = torch.tensor([[CLS, 10, 11, 12, 13, SEP]])
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "special_tokens_mask": torch.tensor([[1, 0, 0, 0, 0, 1]]),
    }
    deleter = Deletion(rate=0.5, unit="token", pad_token_id=PAD, **TOK)
    for seed in range(20):
        out = deleter(batch, gen(seed))
        new = out["input_ids"][0].tolist()
        labels = out["deletion_labels"][0].tolist()
        for pos, tok in enumerate(new):
            if tok == PAD:
                assert labels[pos] == IGNORE_INDEX
                continue
            prev = new[pos - 1] if pos else None
            old = ids[0].tolist()
            gap = pos > 0 and old.index(tok if tok != SEP else SEP, 1) - old.index(prev) > 1
            assert labels[pos] == int(gap)


@pytest.mark.parametrize("mode", ["local", "sentence"])
def test_reorder_is_a_permutation_with_order_targets(mode):
    batch = make_batch(b=32, pad_from=120)
    unit = (
        {"unit": "token"} if mode == "local" else {}
    )  # a token moves <= 2 places (words: test_reorder_words)
    out = Reorder(mode=mode, rate=0.5, window=3, **unit, **TOK)(batch, gen(0))
    labels = out["order_labels"]
    special = batch["special_tokens_mask"].bool()
    assert torch.equal(out["input_ids"][special], batch["input_ids"][special])
    assert out["reordered_mask"].any()
    for row in range(32):
        valid = labels[row] >= 0
        restored = batch["input_ids"][row][labels[row][valid]]
        assert torch.equal(restored, out["input_ids"][row][valid])  # targets restore the original
        assert (
            sorted(labels[row][valid].tolist()) == torch.nonzero(~special[row]).flatten().tolist()
        )
        if mode == "local":
            shift = (labels[row][valid] - torch.nonzero(valid).flatten()).abs()
            assert int(shift.max()) <= 2
        else:  # sentences move whole
            moved = out["sentence_ids"][row][valid]
            changes = int((moved[1:] != moved[:-1]).sum())
            assert changes == len(moved.unique()) - 1
    assert torch.equal(out["token_type_ids"], batch["token_type_ids"])


def test_compose_shares_the_budget():
    steps = [
        UnitMasking(budget="bernoulli", rate=0.12, **TOK),
        Deletion(rate=0.03, pad_token_id=PAD, **TOK),
    ]
    corruption = pickle.loads(pickle.dumps(Compose(steps)))
    batch = make_batch(b=128)
    out = corruption(batch, gen(0))
    n = float((~batch["special_tokens_mask"].bool()).sum())
    total = float(out["corrupted_mask"].sum()) + float(out["deleted_count"].sum())
    assert abs(total / n - 0.15) < 0.015
    # masked tokens survive deletion with their labels
    assert torch.equal(out["mlm_labels"] != IGNORE_INDEX, out["corrupted_mask"])
    with pytest.raises(ClozelabError, match="sum to >= 1"):
        Compose([UnitMasking(rate=0.6, **TOK), Deletion(rate=0.5, **TOK)])


def test_compose_from_config():
    from omegaconf import OmegaConf

    from clozelab.core.config import build

    node = OmegaConf.create(
        {
            "_target_": "clozelab.corruption.compose.Compose",
            "_recursive_": False,
            "steps": [
                {
                    "_target_": "clozelab.corruption.span.SpanMasking",
                    "rate": 0.1,
                    "replace_distribution": "uniform",
                },
                {"_target_": "clozelab.corruption.reorder.Reorder", "rate": 0.1},
            ],
        }
    )
    corruption = build(node, "corruption", corpus=None, pad_token_id=PAD, **TOK)
    out = corruption(make_batch(b=8), gen(0))
    assert {"span_bounds", "order_labels", "mlm_labels"} <= set(out)
    assert "span_bounds" in Compose.produces_for(node)


# --- phrases -----------------------------------------------------------------------------------


def test_phrase_table_matches_word_sequences():
    # words are single tokens here; phrase (20 21) and (30 31 32)
    table = PhraseTable([[[20], [21]], [[30], [31], [32]]])
    ids = torch.tensor([[CLS, 20, 21, 7, 30, 31, 32, 20, SEP, 21, SEP]])
    special = torch.isin(ids, torch.tensor([CLS, SEP]))
    word = torch.where(special, -1, torch.arange(11))
    batch = {"input_ids": ids, "word_ids": word}
    phrase = table.phrase_ids(batch, ~special)[0].tolist()
    assert phrase[1] == phrase[2] >= 0
    assert phrase[4] == phrase[5] == phrase[6] >= 0 and phrase[4] != phrase[1]
    assert phrase[3] == -1 and phrase[7] == -1 and phrase[9] == -1  # never across [SEP]
    masker = UnitMasking(unit="phrase", budget="bernoulli", rate=0.5, fill="none", **TOK)
    masker.phrases = table
    out = masker(
        {**batch, "attention_mask": torch.ones_like(ids), "special_tokens_mask": special.long()},
        gen(0),
    )
    chosen = predicted(out)[0]
    assert chosen[1] == chosen[2] and chosen[4] == chosen[5] == chosen[6]
    assert not chosen[[0, 3, 7, 8, 9, 10]].any()


@pytest.mark.parametrize(
    ("node", "spans"),
    [({"_target_": "clozelab.corruption.masking.UnitMasking"}, False),
     ({"_target_": "clozelab.corruption.masking.UnitMasking", "unit": "token"}, False),
     ({"_target_": "clozelab.corruption.masking.UnitMasking", "unit": "phrase"}, True),
     ({"_target_": "clozelab.corruption.span.SpanMasking"}, True)],
)  # fmt: skip
def test_declared_keys_say_whether_span_bounds_are_written(node, spans):
    """whole_word and token masking choose words, not spans: they do not offer SBO spans."""
    from clozelab.objectives.rtd import corruption_keys

    keys = corruption_keys(OmegaConf.create(node))
    assert {"input_ids", "mlm_labels", "corrupted_mask"} <= keys
    assert ("span_bounds" in keys) == spans
