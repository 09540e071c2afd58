"""dEA alignment noise (SPECS §19): 5% random entity, 15% dropped, 80% kept; all predicted."""

from __future__ import annotations

import pytest
import torch

from clozelab.core.batch import IGNORE_INDEX
from clozelab.core.errors import ClozelabError
from clozelab.corruption.compose import Compose
from clozelab.corruption.entity_alignment import EntityAlignmentNoise
from clozelab.corruption.mask import TokenMasking

N = 1000


def _batch(B=64, T=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    links = torch.randint(N, (B, T), generator=g)
    links[torch.rand(B, T, generator=g) < 0.5] = -1  # half the tokens carry no entity
    ids = torch.randint(5, 100, (B, T), generator=g)
    ones = torch.ones(B, T, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": ones, "special_tokens_mask": 0 * ones,
            "entity_links": links}  # fmt: skip


def test_exact_counts_with_a_pinned_generator():
    batch = _batch()
    noise = EntityAlignmentNoise(num_entities=N)
    out = noise(batch, torch.Generator().manual_seed(7))
    # the same stream, read by hand: one uniform per position, then the random entities
    g = torch.Generator().manual_seed(7)
    u = torch.rand(batch["entity_links"].shape, generator=g)
    random = torch.randint(N, batch["entity_links"].shape, generator=g)
    aligned = batch["entity_links"] >= 0
    replace, drop = aligned & (u < 0.05), aligned & (u >= 0.05) & (u < 0.20)
    keep = aligned & ~replace & ~drop
    assert torch.equal(out["entity_links"][replace], random[replace])
    assert (out["entity_links"][drop] == -1).all()
    assert torch.equal(out["entity_links"][keep], batch["entity_links"][keep])
    assert (out["entity_links"][~aligned] == -1).all()
    assert torch.equal(out["entity_labels"][aligned], batch["entity_links"][aligned])
    assert (out["entity_labels"][~aligned] == IGNORE_INDEX).all()
    n = int(aligned.sum())
    shares = [int(m.sum()) / n for m in (replace, drop, keep)]
    print(f"\ndEA noise over {n} alignments: replaced {shares[0]:.4f}, dropped {shares[1]:.4f}, "
          f"kept {shares[2]:.4f}")  # fmt: skip
    for share, p in zip(shares, (0.05, 0.15, 0.80)):  # within 4 binomial standard deviations
        assert abs(share - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert torch.equal(batch["input_ids"], out["input_ids"])  # no token touched
    again = noise(batch, torch.Generator().manual_seed(7))
    assert all(torch.equal(again[k], out[k]) for k in ("entity_links", "entity_labels"))


def test_composes_with_token_masking_without_sharing_its_budget():
    batch = _batch(B=32, T=128)
    ids = {"vocab_size": 100, "mask_token_id": 4, "special_token_ids": [0, 1, 2, 3, 4]}
    steps = [TokenMasking(rate=0.15, **ids), EntityAlignmentNoise(num_entities=N)]
    compose = Compose(steps, **ids)
    assert compose.rates == [0.15, 0.0] and steps[0].rate == 0.15
    out = compose(batch, torch.Generator().manual_seed(0))
    masked = out["mlm_labels"] != IGNORE_INDEX
    assert abs(masked.float().mean() - 0.15) < 0.02
    assert ((out["entity_labels"] != IGNORE_INDEX) == (batch["entity_links"] >= 0)).all()


def test_refusals():
    with pytest.raises(ClozelabError, match="must not exceed 1"):
        EntityAlignmentNoise(replace_prob=0.5, mask_prob=0.6)
    with pytest.raises(ClozelabError, match="data.entity_links=true"):
        EntityAlignmentNoise(num_entities=N)({"input_ids": torch.zeros(1, 2)}, torch.Generator())
    with pytest.raises(ClozelabError, match="num_entities"):
        EntityAlignmentNoise()(_batch(2, 8), torch.Generator())
