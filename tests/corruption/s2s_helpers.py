"""Batches and decoders shared by the seq2seq corruption tests (pinned generators)."""

from __future__ import annotations

import torch

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
VOCAB = 500
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
TOK = {
    "vocab_size": VOCAB, "mask_token_id": MASK, "special_token_ids": SPECIALS,
    "pad_token_id": PAD, "eos_token_id": SEP,
}  # fmt: skip


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def packed_batch(b=64, t=128, seed=0, ragged=True, pair=False, piece_prob=0.3):
    """``[CLS] body [SEP] [PAD]..`` rows (``pair``: ``[CLS] A [SEP] B [SEP]``) of random lengths
    (``ragged``), with word ids (words of 1+ pieces) and sentences of 10 tokens."""
    g = gen(seed)
    ids = torch.randint(5, VOCAB, (b, t), generator=g)
    n = torch.randint(t // 3, t + 1, (b,), generator=g) if ragged else torch.full((b,), t)
    n[0] = t
    positions = torch.arange(t).expand(b, t)
    real = positions < n.unsqueeze(-1)
    special = (positions == 0) | (positions == (n - 1).unsqueeze(-1)) | ~real
    if pair:
        special |= positions == (n // 2).unsqueeze(-1)
    ids = ids.masked_fill(special, SEP)
    ids[:, 0] = CLS
    ids = ids.masked_fill(~real, PAD)
    cont = torch.rand(b, t, generator=g) < piece_prob
    start = ~cont | special | torch.roll(special, 1, 1)
    word = start.long().cumsum(-1)
    word = (word - word[:, :1]).masked_fill(special, -1)
    sentence = (positions // 10).masked_fill(special, -1)
    return {
        "input_ids": ids,
        "attention_mask": real.long(),
        "token_type_ids": torch.zeros_like(ids),
        "special_tokens_mask": special.long(),
        "word_ids": word,
        "sentence_ids": sentence,
        "index": torch.arange(b),
    }


def rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [r[m.bool()].tolist() for r, m in zip(ids, mask)]


def sources(out) -> list[list[int]]:
    return rows(out["input_ids"], out["attention_mask"])


def targets(out) -> list[list[int]]:
    return rows(out["labels"], out["labels"] != -100)


def originals(batch, bos=True) -> list[list[int]]:
    got = rows(batch["input_ids"], batch["attention_mask"])
    return got if bos else [r[1:] for r in got]


def fill_sentinels(source: list[int], target: list[int], vocab: int = VOCAB) -> list[int]:
    """Undo sentinel corruption: each sentinel of the source replaced by its target run."""
    spans, current = {}, None
    for tok in target[:-1]:  # the target ends with eos
        if tok >= vocab:
            current = tok
            spans[current] = []
        else:
            spans[current].append(tok)
    out = []
    for tok in source:
        out.extend(spans[tok] if tok >= vocab else [tok])
    return out
