"""Tests of BERT token masking (SPECS §1, §3, §4) with pinned generators."""

import math
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clozelab.core.batch import IGNORE_INDEX
from clozelab.core.errors import ClozelabError
from clozelab.corruption.mask import TokenMasking

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 60
TOKENIZER = {"vocab_size": VOCAB, "mask_token_id": MASK, "special_token_ids": SPECIALS}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def masking(**kwargs) -> TokenMasking:
    return TokenMasking(**{**TOKENIZER, **kwargs})


def batch_of(
    lengths: list[int], width: int, seed: int = 0, pair: bool = False, pad_special: bool = True
) -> dict:
    """Rows ``[CLS] a .. [SEP] (b .. [SEP]) [PAD] ..`` with the given real lengths.

    ``pad_special=False`` leaves padding out of ``special_tokens_mask`` (only ``attention_mask``
    marks it), as a hand-written collate function might.
    """
    g = gen(seed)
    ids = torch.randint(len(SPECIALS), VOCAB, (len(lengths), width), generator=g)
    attention = torch.zeros(len(lengths), width, dtype=torch.long)
    token_types = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):  # building test data, not the code under test
        ids[row, 0] = CLS
        ids[row, n - 1] = SEP
        if pair and n >= 5:
            ids[row, n // 2] = SEP
            token_types[row, n // 2 + 1 : n] = 1
        ids[row, n:] = PAD
        attention[row, :n] = 1
    special = torch.isin(ids, torch.tensor([CLS, SEP, PAD])).long()
    if not pad_special:
        special = special * attention
    word_ids = torch.where(special.bool(), -1, torch.arange(width).expand(len(lengths), width))
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "special_tokens_mask": special,
        "token_type_ids": token_types,
        "word_ids": word_ids,
    }


def predicted(out: dict) -> torch.Tensor:
    return out["mlm_labels"] != IGNORE_INDEX


def within(observed: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(observed - p) < sigmas * math.sqrt(p * (1 - p) / n) + 1e-12


# --- invariants over random shapes ----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    extra=st.integers(0, 5),
    rate=st.floats(0.01, 0.99),
    budget=st.sampled_from(["bernoulli", "exact"]),
    replace_from=st.sampled_from(["nonspecial", "vocab"]),
    max_predictions=st.one_of(st.none(), st.integers(1, 10)),
    pad_special=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_invariants(lengths, extra, rate, budget, replace_from, max_predictions, pad_special, seed):
    lengths = [max(n, 2) for n in lengths]
    batch = batch_of(lengths, max(lengths) + extra, seed=seed, pair=True, pad_special=pad_special)
    before = {k: v.clone() for k, v in batch.items()}
    corruption = masking(
        rate=rate, budget=budget, replace_from=replace_from, max_predictions=max_predictions
    )
    out = corruption(batch, gen(seed))
    ids, labels = before["input_ids"], out["mlm_labels"]
    chosen = predicted(out)
    # the input is untouched; other keys pass through as the same objects
    for key, value in before.items():
        assert torch.equal(batch[key], value)
    for key in ("attention_mask", "special_tokens_mask", "token_type_ids", "word_ids"):
        assert out[key] is batch[key]
    assert out is not batch
    # shapes and dtypes
    assert out["input_ids"].shape == ids.shape and out["input_ids"].dtype == ids.dtype
    assert labels.dtype == torch.long and out["replaced_mask"].dtype == torch.bool
    # never on specials or padding
    assert not (chosen & batch["special_tokens_mask"].bool()).any()
    assert not (chosen & ~batch["attention_mask"].bool()).any()
    # labels: originals at predicted positions, -100 elsewhere
    assert torch.equal(labels[chosen], ids[chosen])
    assert (labels[~chosen] == IGNORE_INDEX).all()
    # only predicted positions change; random writes are predicted positions
    assert torch.equal(out["input_ids"][~chosen], ids[~chosen])
    assert not (out["replaced_mask"] & ~chosen).any()
    if replace_from == "nonspecial":
        assert not torch.isin(out["input_ids"][out["replaced_mask"]], torch.tensor(SPECIALS)).any()
    if max_predictions is not None:
        assert chosen.sum(-1).max() <= max_predictions
    if budget == "exact":
        n_candidates = (batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()).sum(
            -1
        )
        k = torch.tensor([max(1, round(n * rate)) for n in lengths])
        if max_predictions is not None:
            k = k.clamp_max(max_predictions)
        assert torch.equal(chosen.sum(-1), torch.minimum(k, n_candidates))


# --- exact budget (BERT) --------------------------------------------------------------------------


def test_padding_excluded_even_when_not_flagged_special():
    batch = batch_of([20] * 100, width=64, pad_special=False)
    assert batch["special_tokens_mask"][:, 20:].sum() == 0
    for budget in ("bernoulli", "exact"):
        out = masking(rate=0.9, budget=budget)(batch, gen(3))
        assert not predicted(out)[:, 19:].any()
        assert predicted(out)[:, 1:19].any()


def test_exact_budget_half_to_even():
    lengths = [10, 30, 50, 70, 110]
    batch = batch_of(lengths, width=128)
    out = masking(budget="exact")(batch, gen(1))
    assert predicted(out).sum(-1).tolist() == [2, 4, 8, 10, 16]


def test_exact_budget_counts_specials_full_128():
    batch = batch_of([128] * 16, width=128, pair=True)  # [CLS] A [SEP] B [SEP]: 125 maskable
    assert (batch["special_tokens_mask"].sum(-1) == 3).all()
    out = masking(budget="exact")(batch, gen(2))
    assert (predicted(out).sum(-1) == 19).all()


def test_exact_budget_max_predictions_caps():
    batch = batch_of([128, 512, 40], width=512)
    out = masking(budget="exact", max_predictions=20)(batch, gen(3))
    assert predicted(out).sum(-1).tolist() == [19, 20, 6]


def test_exact_budget_capped_by_candidates_and_empty_rows():
    batch = batch_of([3, 2, 6], width=6)  # [CLS] x [SEP]; [CLS] [SEP]; 4 candidates
    batch["input_ids"][1] = PAD  # make row 1 all padding
    batch["attention_mask"][1] = 0
    batch["special_tokens_mask"][1] = 1
    out = masking(budget="exact", rate=0.9)(batch, gen(4))
    assert predicted(out).sum(-1).tolist() == [1, 0, 4]


def test_exact_positions_are_uniform_among_candidates():
    rows = 20000
    batch = batch_of([12] * rows, width=12)  # 10 candidates, K = round(1.8) = 2
    out = masking(budget="exact")(batch, gen(5))
    freq = predicted(out)[:, 1:11].float().mean(0)
    assert all(within(f, 0.2, rows) for f in freq.tolist())


# --- bernoulli budget (HF, RoBERTa) ---------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_bernoulli_fraction(rate):
    batch = batch_of([128] * 500 + [64] * 500, width=128, seed=6)
    n = int((batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()).sum())
    out = masking(rate=rate)(batch, gen(7))
    assert within(predicted(out).sum().item() / n, rate, n)


def test_bernoulli_count_varies_and_can_be_zero():
    batch = batch_of([6] * 2000, width=6)  # 4 candidates: P(0 chosen) = 0.85**4 ≈ 0.52
    counts = predicted(masking()(batch, gen(8))).sum(-1)
    assert (counts == 0).any() and (counts >= 2).any()


def test_bernoulli_max_predictions_caps_rows():
    batch = batch_of([128] * 200, width=128)
    out = masking(rate=0.5, max_predictions=20)(batch, gen(9))
    assert (predicted(out).sum(-1) == 20).all()  # 62.5 expected > 20 for every row


# --- what happens to predicted tokens -------------------------------------------------------------


@pytest.mark.parametrize("budget", ["bernoulli", "exact"])
def test_operation_frequencies(budget):
    batch = batch_of([128] * 3000, width=128, seed=10)
    ids = batch["input_ids"]
    out = masking(budget=budget)(batch, gen(11))
    chosen = predicted(out)
    n = int(chosen.sum())
    new = out["input_ids"]
    p_same = 0.1 + 0.1 / (VOCAB - len(SPECIALS))  # a random draw may repeat the original
    assert within(((new == MASK) & chosen).sum().item() / n, 0.8, n)
    assert within(out["replaced_mask"].sum().item() / n, 0.1, n)
    assert within(((new == ids) & chosen).sum().item() / n, p_same, n)
    changed = (new != ids) & (new != MASK) & chosen
    assert within(changed.sum().item() / n, 0.1 * (1 - 1 / (VOCAB - len(SPECIALS))), n)


def test_nonspecial_replacements_never_special_even_mask_missing_from_list():
    batch = batch_of([64] * 500, width=64)
    corruption = TokenMasking(
        mask_prob=0.0,
        random_prob=1.0,
        keep_prob=0.0,
        vocab_size=VOCAB,
        mask_token_id=MASK,
        special_token_ids=[PAD, CLS, SEP],  # [MASK] and [UNK] not listed
    )
    out = corruption(batch, gen(12))
    written = out["input_ids"][out["replaced_mask"]]
    assert written.numel() > 1000
    assert not torch.isin(written, torch.tensor([PAD, CLS, SEP, MASK])).any()
    assert (written == UNK).any()  # not listed as special, so it is a legal replacement


def test_vocab_replacements_can_be_special():
    batch = batch_of([64] * 500, width=64)
    corruption = masking(mask_prob=0.0, random_prob=1.0, keep_prob=0.0, replace_from="vocab")
    out = corruption(batch, gen(13))
    written = out["input_ids"][out["replaced_mask"]]
    assert torch.isin(written, torch.tensor(SPECIALS)).any()


def test_unigram_replacement_probs():
    weights = torch.zeros(VOCAB)
    weights[[7, 8]] = torch.tensor([1.0, 1.0])
    corruption = masking(mask_prob=0.0, random_prob=1.0, keep_prob=0.0, replacement_probs=weights)
    out = corruption(batch_of([32] * 50, width=32), gen(14))
    assert set(out["input_ids"][out["replaced_mask"]].unique().tolist()) == {7, 8}


def test_randomness_off_targets_equal_originals():
    """Like fairseq's test: with mask_prob=1 every predicted input is [MASK]; labels restore it."""
    batch = batch_of([128, 100, 77, 20], width=128)
    for budget in ("bernoulli", "exact"):
        out = masking(mask_prob=1.0, random_prob=0.0, keep_prob=0.0, budget=budget)(batch, gen(15))
        chosen = predicted(out)
        assert chosen.any()
        assert (out["input_ids"][chosen] == MASK).all()
        assert not out["replaced_mask"].any()
        restored = torch.where(chosen, out["mlm_labels"], out["input_ids"])
        assert torch.equal(restored, batch["input_ids"])


# --- determinism, plumbing ------------------------------------------------------------------------


@pytest.mark.parametrize("budget", ["bernoulli", "exact"])
def test_same_seed_same_output_different_seed_different(budget):
    batch = batch_of([128, 90, 50, 128], width=128)
    corruption = masking(budget=budget)
    a, b, c = (corruption(batch, gen(s)) for s in (21, 21, 22))
    for key in ("input_ids", "mlm_labels", "replaced_mask"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["mlm_labels"], c["mlm_labels"])


def test_pickles_for_dataloader_workers():
    corruption = masking(budget="exact", max_predictions=20)
    clone = pickle.loads(pickle.dumps(corruption))
    batch = batch_of([64, 30], width=64)
    assert torch.equal(clone(batch, gen(1))["input_ids"], corruption(batch, gen(1))["input_ids"])
    assert "TokenMasking(rate=0.15" in repr(corruption)


def test_batch_without_special_tokens_mask_uses_special_ids():
    batch = batch_of([40] * 200, width=40)
    batch["input_ids"][:, 5] = UNK
    del batch["special_tokens_mask"]
    out = masking(rate=0.9)(batch, gen(2))
    chosen = predicted(out)
    assert not chosen[:, [0, 5, 39]].any()
    assert chosen[:, 1:5].float().mean() > 0.8


def test_tokenizer_arguments_accept_tensors_and_lists():
    corruption = TokenMasking(
        vocab_size=VOCAB, mask_token_id=MASK, special_token_ids=torch.tensor([0, 2, 3, 4])
    )
    assert corruption.special_token_ids == (0, 2, 3, 4)
    out = corruption(batch_of([10], width=10), gen())
    assert out["input_ids"].shape == (1, 10)


def test_rejects_non_2d_input():
    batch = batch_of([10], width=10)
    batch["input_ids"] = batch["input_ids"][0]
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        masking()(batch, gen())


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key", "value"),
    [
        ({"rate": 0.0}, "corruption.rate", 0.0),
        ({"rate": 1.0}, "corruption.rate", 1.0),
        ({"rate": -0.2}, "corruption.rate", -0.2),
        ({"mask_prob": 1.5, "keep_prob": -0.6}, "corruption.mask_prob", 1.5),
        ({"random_prob": -0.1, "keep_prob": 0.3}, "corruption.random_prob", -0.1),
        ({"keep_prob": 2.0}, "corruption.keep_prob", 2.0),
        ({"keep_prob": 0.3}, "corruption.mask_prob/random_prob/keep_prob", (0.8, 0.1, 0.3)),
        ({"budget": "fixed"}, "corruption.budget", "fixed"),
        ({"max_predictions": 0}, "corruption.max_predictions", 0),
        ({"max_predictions": 2.5}, "corruption.max_predictions", 2.5),
        ({"replace_from": "unigram"}, "corruption.replace_from", "unigram"),
        ({"vocab_size": 0}, "corruption.vocab_size", 0),
        ({"mask_token_id": VOCAB}, "corruption.mask_token_id", VOCAB),
        ({"mask_token_id": -1}, "corruption.mask_token_id", -1),
        ({"mask_token_id": None}, "corruption.mask_token_id", None),
        ({"special_token_ids": [0, 500]}, "corruption.special_token_ids", [500]),
        ({"special_token_ids": None}, "corruption.special_token_ids", None),
    ],
)
def test_validation_names_key_and_value(kwargs, key, value):
    with pytest.raises(ClozelabError) as info:
        masking(**kwargs)
    message = str(info.value)
    assert message.startswith(f"{key}={value!r}:"), message
    assert "Fix:" in message
