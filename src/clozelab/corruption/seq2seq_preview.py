"""``clozelab preview`` of a seq2seq corruption: statistics of (source, target) pairs against the
clean rows, and rows rendered as ``source => target`` (sentinels as ``<extra_id_i>``)."""

from __future__ import annotations

import torch

from clozelab.core.batch import IGNORE_INDEX


def seq2seq_stats(pairs: list[tuple[dict, dict]], tokenizer, n_sentinels: int, bos: bool) -> dict:
    vocab = tokenizer.vocab_size
    totals = dict.fromkeys(
        (
            "sequences",
            "input",
            "candidates",
            "source",
            "target",
            "sentinels",
            "target_sentinels",
            "masks",
            "touched",
        ),
        0,
    )
    for clean, out in pairs:
        real = clean["attention_mask"].bool()
        special = clean["special_tokens_mask"].bool() & real
        source = out["attention_mask"].bool()
        target = out["labels"] != IGNORE_INDEX
        ids, labels = out["input_ids"], out["labels"]
        totals["sequences"] += ids.shape[0]
        totals["input"] += int(real.sum())
        totals["candidates"] += int((real & ~special).sum())
        totals["source"] += int(source.sum())
        totals["target"] += int(target.sum())
        totals["sentinels"] += int(((ids >= vocab) & source).sum())
        totals["target_sentinels"] += int(((labels >= vocab) & target).sum())
        totals["masks"] += int(((ids == tokenizer.mask_id) & source).sum())
        for token, dropped in ((tokenizer.sep_id, 0), (tokenizer.cls_id, 0 if bos else 1)):
            before = ((clean["input_ids"] == token) & special).sum(-1) - dropped
            after = ((ids == token) & source).sum(-1)
            totals["touched"] += int((before.clamp_min(0) - after).abs().sum())
    n = max(totals["sequences"], 1)
    content = totals["target"] - totals["target_sentinels"]
    spans = totals["target_sentinels"]
    return {
        "sequences": totals["sequences"],
        "candidate_tokens": totals["candidates"],
        "input_tokens_mean": totals["input"] / n,
        "source_tokens_mean": totals["source"] / n,
        "target_tokens_mean": totals["target"] / n,
        "source_to_input": totals["source"] / max(totals["input"], 1),
        "target_to_input": totals["target"] / max(totals["input"], 1),
        "sentinels_per_sequence": totals["sentinels"] / n,
        "masks_per_sequence": totals["masks"] / n,
        # target tokens that are not sentinels, per candidate token (T5 spans: the noise density
        # plus one eos per row; restoring objectives: about 1)
        "target_content_per_candidate": content / max(totals["candidates"], 1),
        "span_length_tokens_mean": (content - totals["sequences"]) / spans if spans else None,
        "n_sentinels": n_sentinels,
        "special_tokens_touched": totals["touched"],
    }


def render_pair(out: dict, row: int, tokenizer, n_sentinels: int) -> str:
    vocab = tokenizer.vocab_size

    def spell(ids: torch.Tensor) -> str:
        words = []
        for tok in ids.tolist():
            if tok >= vocab:
                words.append(f"<extra_id_{vocab + n_sentinels - 1 - tok}>")
            else:
                words.append(tokenizer.hf.id_to_token(tok) or f"<{tok}>")
        return " ".join(words)

    source = out["input_ids"][row][out["attention_mask"][row].bool()]
    target = out["labels"][row][out["labels"][row] != IGNORE_INDEX]
    return f"{spell(source)}  =>  {spell(target)}"
