"""Tests of the shared corruption pieces: validation, candidates, selection, sampling, rounding."""

import math

import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.corruption.base import (
    IGNORE_INDEX,
    Corruption,
    OperationMix,
    ReplacementSampler,
    apply_operations,
    candidates,
    check_rate,
    choose_k,
    mlm_targets,
    prediction_budget,
    round_half_even,
)

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 50


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch_of(lengths: list[int], width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows ``[CLS] w ... w [SEP] [PAD] ...`` with the given real lengths (specials included)."""
    g = gen(seed)
    ids = torch.randint(len(SPECIALS), VOCAB, (len(lengths), width), generator=g)
    attention = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):  # building test data, not the code under test
        ids[row, 0] = CLS
        ids[row, n - 1] = SEP
        ids[row, n:] = PAD
        attention[row, :n] = 1
    special = torch.isin(ids, torch.tensor([CLS, SEP, PAD])).long()
    return {"input_ids": ids, "attention_mask": attention, "special_tokens_mask": special}


def sigma_bound(p: float, n: int, sigmas: float = 5.0) -> float:
    return sigmas * math.sqrt(p * (1 - p) / n) + 1e-12


# --- validation -----------------------------------------------------------------------------------


def test_operation_mix_defaults_are_bert():
    mix = OperationMix()
    assert (mix.mask, mix.random, mix.keep) == (0.8, 0.1, 0.1)


def test_operation_mix_accepts_ints_and_edge_values():
    mix = OperationMix(1, 0, 0)
    assert (mix.mask, mix.random, mix.keep) == (1.0, 0.0, 0.0)
    assert isinstance(mix.mask, float)


@pytest.mark.parametrize(
    ("kwargs", "key", "value"),
    [
        ({"mask": 1.2, "random": 0.0, "keep": -0.2}, "corruption.mask_prob", 1.2),
        ({"mask": 0.9, "random": -0.1, "keep": 0.2}, "corruption.random_prob", -0.1),
        ({"mask": 0.8, "random": 0.1, "keep": float("nan")}, "corruption.keep_prob", float("nan")),
        ({"mask": True, "random": 0.0, "keep": 0.0}, "corruption.mask_prob", True),
        ({"mask": "0.8", "random": 0.1, "keep": 0.1}, "corruption.mask_prob", "0.8"),
    ],
)
def test_operation_mix_rejects_bad_probability(kwargs, key, value):
    with pytest.raises(ClozelabError) as info:
        OperationMix(**kwargs)
    message = str(info.value)
    assert message.startswith(f"{key}={value!r}:")
    assert "Fix:" in message


def test_operation_mix_must_sum_to_one():
    with pytest.raises(ClozelabError) as info:
        OperationMix(0.8, 0.1, 0.2)
    message = str(info.value)
    assert "corruption.mask_prob/random_prob/keep_prob=(0.8, 0.1, 0.2)" in message
    assert "sum to 1" in message and "Fix:" in message


def test_operation_mix_sum_tolerance():
    OperationMix(0.7, 0.2, 0.1)  # 0.7 + 0.2 + 0.1 != 1.0 exactly in floating point
    OperationMix(0.8, 0.1, 0.1 + 5e-7)
    with pytest.raises(ClozelabError):
        OperationMix(0.8, 0.1, 0.1 + 5e-6)


def test_operation_mix_prefix_names_the_group():
    with pytest.raises(ClozelabError, match=r"^corruption\.levels\.0\.mask_prob=2"):
        OperationMix(2, 0, 0, prefix="corruption.levels.0")


@pytest.mark.parametrize(
    "rate", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan"), float("inf"), "0.15", None, True]
)
def test_check_rate_rejects(rate):
    with pytest.raises(ClozelabError) as info:
        check_rate(rate)
    message = str(info.value)
    assert message.startswith(f"corruption.rate={rate!r}:")
    assert "Fix:" in message


@pytest.mark.parametrize("rate", [1e-6, 0.15, 0.5, 0.8, 1 - 1e-9])
def test_check_rate_accepts(rate):
    assert check_rate(rate) == rate


def test_check_rate_custom_key():
    with pytest.raises(ClozelabError, match=r"^corruption\.phrase_rate=0:"):
        check_rate(0, key="corruption.phrase_rate")


def test_corruption_base_is_abstract():
    with pytest.raises(NotImplementedError):
        Corruption()({}, gen())
    assert "input_ids" in Corruption.requires and "input_ids" in Corruption.produces


# --- rounding and budget --------------------------------------------------------------------------


def test_round_half_even_scalars():
    assert [round_half_even(x) for x in (0.5, 1.5, 2.5, 3.5, 4.5, 2.4, 2.6)] == [
        0,
        2,
        2,
        4,
        4,
        2,
        3,
    ]


def test_round_half_even_reproduces_python_round_of_bert_budget():
    lengths = torch.tensor([10, 30, 50, 70, 110, 128, 512])
    got = round_half_even(lengths * 0.15)  # float64 product, like Python's len(tokens) * 0.15
    assert got.dtype == torch.long
    assert got.tolist() == [round(n * 0.15) for n in lengths.tolist()] == [2, 4, 8, 10, 16, 19, 77]
    # also correct when the caller hands in float32 counts
    assert round_half_even(lengths.float() * 0.5).tolist() == [5, 15, 25, 35, 55, 64, 256]


def test_prediction_budget_minimum_and_cap():
    n = torch.tensor([0, 1, 3, 10, 128, 512])
    assert prediction_budget(n, 0.15).tolist() == [1, 1, 1, 2, 19, 77]
    assert prediction_budget(n, 0.15, max_predictions=20).tolist() == [1, 1, 1, 2, 19, 20]
    assert prediction_budget(n, 0.15, minimum=0).tolist() == [0, 0, 0, 2, 19, 77]


# --- candidates and selection ---------------------------------------------------------------------


def test_candidates_exclude_specials_and_padding():
    batch = batch_of([5, 8, 3], width=8)
    got = candidates(batch)
    assert got.dtype == torch.bool
    expected = torch.tensor(
        [
            [0, 1, 1, 1, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 1, 1, 0],
            [0, 1, 0, 0, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(got, expected)


def test_candidates_exclude_padding_not_flagged_special():
    batch = batch_of([3, 5], width=5)
    batch["special_tokens_mask"] = batch["special_tokens_mask"] * batch["attention_mask"]
    assert candidates(batch).tolist() == [
        [False, True, False, False, False],
        [False, *[True] * 3, False],
    ]


def test_candidates_from_special_ids_when_no_mask():
    batch = batch_of([5, 8], width=8)
    batch["input_ids"][0, 2] = UNK
    del batch["special_tokens_mask"]
    got = candidates(batch, special_token_ids=SPECIALS)
    assert not got[0, 2]  # like HF without a precomputed mask, [UNK] counts as special
    assert got[1, 1:7].all() and not got[1, 0] and not got[1, 7]
    with pytest.raises(KeyError, match="special_tokens_mask"):
        candidates(batch)


def test_candidates_without_attention_mask_treat_all_as_real():
    batch = batch_of([4], width=4)
    del batch["attention_mask"]
    assert candidates(batch).tolist() == [[False, True, True, False]]


def test_choose_k_exact_counts_only_eligible():
    g = gen(1)
    eligible = torch.rand(64, 40, generator=g) < 0.5
    k = torch.randint(0, 30, (64,), generator=g)
    chosen = choose_k(torch.rand(64, 40, generator=g), eligible, k)
    assert not (chosen & ~eligible).any()
    assert torch.equal(chosen.sum(-1), torch.minimum(k, eligible.sum(-1)))


def test_choose_k_zero_budget_and_empty_rows():
    eligible = torch.zeros(3, 5, dtype=torch.bool)
    chosen = choose_k(torch.rand(3, 5), eligible, torch.tensor([2, 0, 5]))
    assert not chosen.any()
    chosen = choose_k(torch.rand(3, 5), ~eligible, torch.zeros(3, dtype=torch.long))
    assert not chosen.any()


def test_choose_k_is_uniform():
    rows, width, k = 20000, 10, 3
    eligible = torch.ones(rows, width, dtype=torch.bool)
    eligible[:, 0] = False
    chosen = choose_k(torch.rand(rows, width, generator=gen(2)), eligible, torch.full((rows,), k))
    freq = chosen[:, 1:].float().mean(0)  # each of the 9 eligible positions: 3/9
    assert (freq - k / 9).abs().max() < sigma_bound(k / 9, rows)
    assert chosen[:, 0].sum() == 0


def test_mlm_targets():
    ids = torch.tensor([[5, 6, 7]])
    sel = torch.tensor([[False, True, False]])
    assert mlm_targets(ids, sel).tolist() == [[IGNORE_INDEX, 6, IGNORE_INDEX]]


# --- replacement sampler --------------------------------------------------------------------------


def test_sampler_nonspecial_never_draws_specials_and_covers_the_rest():
    sampler = ReplacementSampler(VOCAB, SPECIALS, "nonspecial")
    draws = sampler.sample(50000, gen(3))
    assert draws.dtype == torch.long and draws.shape == (50000,)
    assert not torch.isin(draws, torch.tensor(SPECIALS)).any()
    counts = torch.bincount(draws, minlength=VOCAB)[len(SPECIALS) :].float()
    p = 1 / (VOCAB - len(SPECIALS))
    assert (counts / 50000 - p).abs().max() < sigma_bound(p, 50000)


def test_sampler_vocab_draws_whole_vocab():
    sampler = ReplacementSampler(VOCAB, SPECIALS, "vocab")
    draws = sampler.sample(50000, gen(4))
    counts = torch.bincount(draws, minlength=VOCAB).float()
    assert counts.numel() == VOCAB
    assert (counts / 50000 - 1 / VOCAB).abs().max() < sigma_bound(1 / VOCAB, 50000)
    assert counts[list(SPECIALS)].min() > 0


def test_sampler_probs_follow_weights_and_drop_specials():
    weights = torch.zeros(VOCAB)
    weights[[PAD, 10, 11]] = torch.tensor([5.0, 1.0, 3.0])
    sampler = ReplacementSampler(VOCAB, SPECIALS, "nonspecial", probs=weights)
    draws = sampler.sample(40000, gen(5))
    assert set(draws.unique().tolist()) == {10, 11}
    assert abs((draws == 11).float().mean().item() - 0.75) < sigma_bound(0.75, 40000)
    with_specials = ReplacementSampler(VOCAB, SPECIALS, "vocab", probs=weights).sample(
        40000, gen(5)
    )
    assert abs((with_specials == PAD).float().mean().item() - 5 / 9) < sigma_bound(5 / 9, 40000)
    assert sampler.sample(0, gen()).numel() == 0


def test_sampler_is_seeded():
    sampler = ReplacementSampler(VOCAB, SPECIALS)
    assert torch.equal(sampler.sample(100, gen(7)), sampler.sample(100, gen(7)))
    assert not torch.equal(sampler.sample(100, gen(7)), sampler.sample(100, gen(8)))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"vocab_size": 0}, "corruption.vocab_size"),
        ({"replace_from": "unigram"}, "corruption.replace_from"),
        ({"special_token_ids": (0, 99)}, "corruption.special_token_ids"),
        ({"special_token_ids": ("a",)}, "corruption.special_token_ids"),
        ({"vocab_size": 3, "special_token_ids": (0, 1, 2)}, "corruption.replace_from"),
        ({"probs": torch.ones(7)}, "corruption.replacement_probs"),
        ({"probs": -torch.ones(VOCAB)}, "corruption.replacement_probs"),
        ({"probs": torch.eye(VOCAB)[PAD]}, "corruption.replacement_probs"),
    ],
)
def test_sampler_validation(kwargs, key):
    args = {"vocab_size": VOCAB, "special_token_ids": SPECIALS, **kwargs}
    with pytest.raises(ClozelabError) as info:
        ReplacementSampler(**args)
    assert str(info.value).startswith(f"{key}=")
    assert "Fix:" in str(info.value)


# --- apply_operations -----------------------------------------------------------------------------


def test_apply_operations_fractions_and_invariants():
    batch = batch_of([128] * 2000, width=128, seed=9)
    ids = batch["input_ids"]
    original = ids.clone()
    selected = candidates(batch) & (torch.rand(ids.shape, generator=gen(10)) < 0.15)
    sampler = ReplacementSampler(VOCAB, SPECIALS)
    new, replaced = apply_operations(ids, selected, OperationMix(), gen(11), MASK, sampler)
    assert torch.equal(ids, original)  # not mutated
    assert torch.equal(new[~selected], ids[~selected])
    assert not (replaced & ~selected).any()
    n = int(selected.sum())
    masked = (new == MASK) & selected
    unchanged = (new == ids) & selected
    p_unchanged = 0.1 + 0.1 / (VOCAB - len(SPECIALS))
    assert abs(masked.sum().item() / n - 0.8) < sigma_bound(0.8, n)
    assert abs(replaced.sum().item() / n - 0.1) < sigma_bound(0.1, n)
    assert abs(unchanged.sum().item() / n - p_unchanged) < sigma_bound(p_unchanged, n)
    assert not torch.isin(new[replaced], torch.tensor(SPECIALS)).any()


def test_apply_operations_degenerate_mixes():
    batch = batch_of([20] * 4, width=20)
    ids, selected = batch["input_ids"], candidates(batch)
    new, replaced = apply_operations(ids, selected, OperationMix(1, 0, 0), gen(), MASK, None)
    assert (new[selected] == MASK).all() and not replaced.any()
    new, replaced = apply_operations(ids, selected, OperationMix(0, 0, 1), gen(), None, None)
    assert torch.equal(new, ids) and not replaced.any()
    sampler = ReplacementSampler(VOCAB, SPECIALS)
    new, replaced = apply_operations(ids, selected, OperationMix(0, 1, 0), gen(), None, sampler)
    assert torch.equal(replaced, selected)


def test_apply_operations_requires_what_the_mix_uses():
    batch = batch_of([6], width=6)
    ids, selected = batch["input_ids"], candidates(batch)
    with pytest.raises(ValueError, match="mask_token_id"):
        apply_operations(ids, selected, OperationMix(), gen(), None, ReplacementSampler(VOCAB))
    with pytest.raises(ValueError, match="replacement_sampler"):
        apply_operations(ids, selected, OperationMix(), gen(), MASK, None)
