"""XLNet's permutation targets (SPECS §18): selection, order, perm_mask and target_mapping."""

from __future__ import annotations

import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.corruption.base import IGNORE_INDEX
from clozelab.corruption.permutation import PermutationTargets


def make_batch(b: int = 64, t: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (b, t), generator=g)
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    special = torch.zeros(b, t, dtype=torch.long)
    special[:, 0] = 1
    special[torch.arange(b), lengths - 1] = 1
    special[:, t // 3] = 1  # a middle [SEP]
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask, "special_tokens_mask": special & mask}


def run(corruption=None, batch=None, seed: int = 1):
    corruption = corruption or PermutationTargets()
    batch = batch or make_batch()
    return batch, corruption(batch, torch.Generator().manual_seed(seed))


def predicted_of(out) -> torch.Tensor:
    return out["target_mapping"].sum(1) > 0  # (B, T)


def brute_force_perm_mask(order: list[int]) -> torch.Tensor:
    """XLNet's rule, one pair at a time: i may not see j iff j is predicted and j is not
    strictly before i in the factorisation order (non-predicted tokens come first, order 0)."""
    t = len(order)
    mask = torch.zeros(t, t, dtype=torch.bool)
    for i in range(t):
        for j in range(t):
            mask[i, j] = order[j] > 0 and order[j] >= order[i]
    return mask


def test_perm_mask_matches_brute_force_from_the_order():
    _, out = run(batch=make_batch(b=6, t=24))
    predicted = predicted_of(out)
    for row in range(6):
        # recover the order from the query stream's mask: place = 1 + predicted tokens it sees
        perm = out["perm_mask"][row]
        seen = (~perm & predicted[row][None, :]).sum(-1)
        order = torch.where(predicted[row], seen + 1, 0).tolist()
        n = int(predicted[row].sum())
        assert sorted(o for o in order if o) == list(range(1, n + 1))  # a permutation
        assert torch.equal(perm, brute_force_perm_mask(order))


def test_order_properties():
    _, out = run()
    predicted = predicted_of(out)
    perm = out["perm_mask"]
    # non-predicted tokens see every non-predicted token and no predicted one
    rows = ~predicted
    assert not (perm & ~predicted[:, None, :] & rows[:, :, None]).any()
    assert torch.equal(
        perm & rows[:, :, None], predicted[:, None, :].expand_as(perm) & rows[:, :, None]
    )
    # a predicted token never sees itself in the query stream; predicted tokens form a chain
    assert perm.diagonal(dim1=1, dim2=2)[predicted].all()
    pp = predicted[:, :, None] & predicted[:, None, :]
    visible = ~perm & pp
    assert not (visible & visible.transpose(1, 2)).any()  # never both ways
    n = predicted.sum(-1)
    pairs = visible.sum((1, 2))
    assert torch.equal(pairs, n * (n - 1) // 2)  # a total order


def test_targets_are_the_original_tokens_at_real_nonspecial_positions():
    batch, out = run()
    mapping, labels = out["target_mapping"], out["plm_labels"]
    valid = labels != IGNORE_INDEX
    assert torch.equal(mapping.sum(-1) > 0, valid)
    assert set(mapping.unique().tolist()) <= {0.0, 1.0}
    positions = mapping.argmax(-1)
    assert torch.equal(labels[valid], batch["input_ids"].gather(1, positions)[valid])
    predicted = predicted_of(out)
    assert not (predicted & batch["special_tokens_mask"].bool()).any()
    assert not (predicted & (batch["attention_mask"] == 0)).any()
    assert torch.equal(out["input_ids"], batch["input_ids"])  # the content is left as it is
    # rows list the targets in reading order
    rank = torch.where(valid, positions, 10**6)
    assert torch.equal(rank, rank.sort(-1).values)


@pytest.mark.parametrize("k", [6, 7])
def test_predicted_fraction_is_one_in_k(k):
    batch, out = run(PermutationTargets(k=k))
    eligible = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
    n = eligible.sum(-1)
    assert torch.equal(predicted_of(out).sum(-1), (n // k).clamp_min(1))  # budget met exactly


def test_span_lengths_follow_one_over_n():
    corruption = PermutationTargets(k=6, max_gram=5)
    g = torch.Generator().manual_seed(3)
    # spans before the budget is applied; long rows, so windows cut at the end hardly matter
    cover = corruption.span_cover(200, 4096, g)
    starts = cover & ~torch.nn.functional.pad(cover, (1, 0))[:, :-1]
    ends = cover & ~torch.nn.functional.pad(cover, (0, 1))[:, 1:]
    lengths = ends.nonzero()[:, 1] - starts.nonzero()[:, 1] + 1
    # windows are at least k*n long with the span strictly inside: spans never touch
    counts = torch.bincount(lengths, minlength=6)[1:6].double()
    observed = counts / counts.sum()
    expected = 1 / torch.arange(1, 6, dtype=torch.float64)
    expected /= expected.sum()
    assert (observed - expected).abs().max() < 0.01
    # about one token in k is covered
    assert abs(cover.double().mean().item() - 1 / 6) < 0.01


def test_seeded_by_the_generator():
    batch = make_batch()
    _, a = run(batch=batch, seed=5)
    _, b = run(batch=batch, seed=5)
    _, c = run(batch=batch, seed=6)
    assert all(torch.equal(a[k], b[k]) for k in ("perm_mask", "target_mapping", "plm_labels"))
    assert not torch.equal(a["perm_mask"], c["perm_mask"])


def test_fixed_num_predict_and_short_rows():
    batch = make_batch(b=4, t=16)
    batch["attention_mask"][0, 4:] = 0  # a row with only 2 real non-special tokens
    batch["special_tokens_mask"][0, 3] = 1
    batch["special_tokens_mask"][0, 4:] = 0
    _, out = run(PermutationTargets(num_predict=5), batch)
    assert predicted_of(out)[0].sum() == 2
    assert (predicted_of(out)[1:].sum(-1) == 5).all()


def test_bad_config_names_the_key():
    with pytest.raises(ClozelabError, match="corruption.k"):
        PermutationTargets(k=1)
    with pytest.raises(ClozelabError, match="corruption.max_gram"):
        PermutationTargets(max_gram=0)
