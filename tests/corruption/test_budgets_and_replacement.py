"""Paper budgets of token masking (BERT's fixed K, fairseq's probabilistic rounding) and the
unigram replacement distribution of every corruption that writes random tokens (issue 15, 1-2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from clozelab.core.batch import IGNORE_INDEX
from clozelab.core.errors import ClozelabError
from clozelab.corruption.mask import TokenMasking
from clozelab.corruption.runtime import runtime_kwargs
from clozelab.data.corpus_stats import CorpusStats
from clozelab.data.shards import ShardWriter
from tests.helpers import compose_config

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 60
TOKENIZER = {"vocab_size": VOCAB, "mask_token_id": MASK, "special_token_ids": SPECIALS}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rows(lengths: list[int], width: int) -> dict:
    """``[CLS] x .. x [SEP] [PAD] ..`` rows of the given real lengths (x = 20)."""
    ids = torch.full((len(lengths), width), PAD)
    attention = torch.zeros(len(lengths), width, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, :n] = 20
        ids[r, 0], ids[r, n - 1] = CLS, SEP
        attention[r, :n] = 1
    special = torch.isin(ids, torch.tensor([PAD, CLS, SEP])).long()
    return {"input_ids": ids, "attention_mask": attention, "special_tokens_mask": special}


def counts(out: dict) -> list[int]:
    return (out["mlm_labels"] != IGNORE_INDEX).sum(-1).tolist()


def bert_k(n: int, max_predictions: int) -> int:
    """Devlin et al.'s create_masked_lm_predictions, written out: Python 3 round (half to even)."""
    return min(max_predictions, max(1, round(n * 0.15)))


def recipe_corruption(name: str) -> TokenMasking:
    cfg = compose_config(f"experiment={name}")
    node = OmegaConf.to_container(cfg.corruption)
    cls = get_class(node.pop("_target_"))
    return cls(**node, **{**TOKENIZER, **{"special_token_ids": SPECIALS}})


def test_bert_recipe_picks_exactly_berts_budget():
    corruption = recipe_corruption("bert")
    assert corruption.budget == "exact" and corruption.max_predictions == 20
    lengths = [3, 10, 30, 50, 70, 110, 128, 200, 512]
    # hand values: 0.45->1 (the max(1, .)), 1.5->2, 4.5->4, 7.5->8, 10.5->10, 16.5->16 (half to
    # even), 19.2->19, 30->20 and 76.8->77->20 (the cap of 20 at length 128)
    expected = [1, 2, 4, 8, 10, 16, 19, 20, 20]
    assert [bert_k(n, 20) for n in lengths] == expected
    for seed in range(5):
        assert counts(corruption(rows(lengths, 512), gen(seed))) == expected
    # BERT's second phase: length 512 with max_predictions_per_seq = 80
    long = TokenMasking(budget="exact", max_predictions=80, **TOKENIZER)
    assert counts(long(rows([512, 128], 512), gen(0))) == [bert_k(512, 80), 19] == [77, 19]


def test_fairseq_budget_is_int_of_pn_plus_uniform():
    corruption = TokenMasking(budget="fairseq", **TOKENIZER)
    lengths = [10, 30, 64, 128, 3]
    batch = rows(lengths, 128)
    out = corruption(batch, gen(7))
    # the same draws by hand: one key per position (the subset), then one u per row (the count)
    g = gen(7)
    torch.rand(batch["input_ids"].shape, generator=g)
    u = torch.rand(len(lengths), generator=g, dtype=torch.float64).tolist()
    expected = [min(int(0.15 * n + ui), n - 2) for n, ui in zip(lengths, u)]
    assert counts(out) == expected
    # E[K] = 0.15 n: at n = 30 K is 4 or 5, each about half the time; at n = 40, always 6
    many = corruption(rows([30] * 4000 + [40] * 10, 40), gen(8))
    k = torch.tensor(counts(many))
    assert set(k[:4000].tolist()) == {4, 5} and (k[4000:] == 6).all()
    assert abs(float(k[:4000].float().mean()) - 4.5) < 5 * 0.5 / math.sqrt(4000)


def test_roberta_recipe_uses_the_fairseq_rule():
    corruption = recipe_corruption("roberta")
    assert corruption.budget == "fairseq" and corruption.sampler.replace_from == "nonspecial"


def test_bad_budget_is_named():
    with pytest.raises(ClozelabError, match="corruption.budget"):
        TokenMasking(budget="poisson", **TOKENIZER)


# --- unigram replacement --------------------------------------------------------------------------


def _shards(path, tokens: list[int]):
    writer = ShardWriter(path, vocab_size=VOCAB)
    ids = np.asarray(tokens, dtype=np.int32)
    writer.add_document([(ids, np.arange(len(ids), dtype=np.int32), np.full(len(ids), -1))])
    writer.close()
    return str(path)


REPLACING = [
    "bart", "bart_infill", "bart_permute", "bart_rotate", "bart_token_delete", "bart_token_mask",
    "ernie", "entity", "insert", "mask", "mass", "ngram", "phrase", "replace", "span", "whole_word",
]  # fmt: skip
RANDOM_KEYS = ("random_prob", "random_ratio", "mask_random")  # a share of random ids


@pytest.mark.parametrize("preset", REPLACING)
def test_every_replacing_preset_accepts_unigram(preset, tmp_path):
    """Every preset that writes random tokens takes replace_distribution=unigram and then draws
    them from the shards' counts: here 10 x3, 11 x1 (every other id 0 times)."""
    corpus = _shards(tmp_path / "train", [10, 10, 10, 11])
    cfg = compose_config(f"corruption={preset}", "corruption.replace_distribution=unigram")
    node = OmegaConf.to_container(cfg.corruption)
    cls = get_class(node.pop("_target_"))

    class Tok:
        vocab_size, mask_id, special_ids, pad_id, sep_id = VOCAB, MASK, SPECIALS, PAD, SEP

    runtime = runtime_kwargs(cls, Tok, None)
    assert "corpus" in runtime, f"{preset} cannot receive the corpus table"
    runtime["corpus"] = CorpusStats(corpus)
    corruption = cls(**node, **runtime)
    assert torch.allclose(corruption.sampler.probs[[10, 11]], torch.tensor([0.75, 0.25]))
    drawn = corruption.sampler.sample(20000, gen(3))
    assert set(drawn.unique().tolist()) == {10, 11}
    assert abs(float((drawn == 10).double().mean()) - 0.75) < 5 * math.sqrt(0.75 * 0.25 / 20000)


def test_token_masking_unigram_draw_frequencies(tmp_path):
    corpus = _shards(tmp_path / "train", [30] * 6 + [31] * 3 + [32])  # 0.6 / 0.3 / 0.1
    corruption = TokenMasking(
        mask_prob=0.0,
        random_prob=1.0,
        keep_prob=0.0,
        replace_distribution="unigram",
        corpus=CorpusStats(corpus),
        **TOKENIZER,
    )
    out = corruption(rows([64] * 400, 64), gen(4))
    written = out["input_ids"][out["replaced_mask"]]
    n = written.numel()
    assert n > 2000 and set(written.unique().tolist()) == {30, 31, 32}
    for token, p in ((30, 0.6), (31, 0.3), (32, 0.1)):
        assert abs(float((written == token).double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_token_masking_unigram_without_table_is_refused_on_use():
    corruption = TokenMasking(replace_distribution="unigram", **TOKENIZER)  # builds (preview)
    with pytest.raises(ClozelabError, match="replace_distribution=unigram"):
        corruption(rows([20], 20), gen(0))
    with pytest.raises(ClozelabError, match="corruption.replace_distribution"):
        TokenMasking(replace_distribution="zipf", **TOKENIZER)
    # mask-only corruption never replaces: no table needed
    TokenMasking(
        mask_prob=1.0, random_prob=0.0, keep_prob=0.0, replace_distribution="unigram", **TOKENIZER
    )(rows([20], 20), gen(0))


def test_the_list_covers_every_preset_that_replaces():
    from clozelab.core.config import conf_dir

    replacing = sorted(
        path.stem
        for path in (conf_dir() / "corruption").glob("*.yaml")
        if any(OmegaConf.load(path).get(key, 0) for key in RANDOM_KEYS)
    )
    assert replacing == sorted(REPLACING)
