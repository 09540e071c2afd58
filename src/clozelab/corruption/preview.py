"""What ``clozelab preview`` shows of a corruption: statistics over (clean, corrupted) batch pairs
and one corrupted row rendered with its changes marked (the default ``Corruption.preview_stats``
and ``Corruption.preview_render``; seq2seq corruptions render ``source => target``)."""

from __future__ import annotations

import torch

from clozelab.core.batch import IGNORE_INDEX

LEGEND = (
    "legend: [MASK] a masked token · {new<-old} a token replaced by a random one (new, was old) "
    "· (tok) a chosen token kept unchanged (still predicted) · ~ tokens deleted here · ^tok a "
    "moved token · +tok an inserted token · seq2seq: source => target"
)
MERGED = (
    "span lengths count merged spans: maximal runs of adjacent chosen tokens (spans drawn side "
    "by side count as one longer span)"
)


def corruption_stats(batches: list[tuple[dict, dict]], mask_id: int) -> dict:
    """Statistics of (clean batch, corrupted batch) pairs; see the module docstring."""
    n_cand = corrupted = predicted = special_touched = sequences = 0
    ops = {"mask": 0, "replace": 0, "keep": 0, "delete": 0, "reorder": 0, "insert": 0}
    words_hist: dict[int, int] = {}
    tokens_hist: dict[int, int] = {}
    for clean, out in batches:
        special = clean["special_tokens_mask"].bool() | ~clean["attention_mask"].bool()
        eligible = ~special
        sequences += clean["input_ids"].shape[0]
        n_cand += int(eligible.sum())
        deleted = int(out["deleted_count"].sum()) if "deleted_count" in out else 0
        ops["delete"] += deleted
        inserted = int(out["inserted_count"].sum()) if "inserted_count" in out else 0
        ops["insert"] += inserted
        reordered = out.get("reordered_mask")
        if reordered is not None:
            ops["reorder"] += int(reordered.sum())
        labels = out.get("mlm_labels")
        same_shape = (
            out["input_ids"].shape == clean["input_ids"].shape and deleted == 0 and inserted == 0
        )
        chosen = out.get("corrupted_mask")
        if chosen is None and labels is not None:
            chosen = labels != IGNORE_INDEX
        if chosen is not None:
            chosen = chosen.bool()
            if labels is not None:
                predicted += int((labels != IGNORE_INDEX).sum())
            if "insertion_labels" in out:  # inserted tokens are counted by inserted_count
                chosen = chosen & (out["insertion_labels"] != 1)
            masked = chosen & (out["input_ids"] == mask_id)
            replaced = chosen & out.get("replaced_mask", torch.zeros_like(chosen)).bool()
            moved = reordered.bool() if reordered is not None else torch.zeros_like(chosen)
            ops["mask"] += int(masked.sum())
            ops["replace"] += int((replaced & ~masked).sum())
            ops["keep"] += int((chosen & ~masked & ~replaced & ~moved).sum())
            corrupted += int(chosen.sum())
            out_special = out["special_tokens_mask"].bool() | ~out["attention_mask"].bool()
            special_touched += int((chosen & out_special).sum())
            if labels is not None:
                special_touched += int(((labels != IGNORE_INDEX) & out_special).sum())
            if same_shape and reordered is None:
                special_touched += int((out["input_ids"] != clean["input_ids"])[special].sum())
                _span_hist(chosen, clean["word_ids"], words_hist, tokens_hist)
        corrupted += deleted + inserted
    total_ops = max(sum(ops.values()), 1)
    return {
        "sequences": sequences,
        "candidate_tokens": n_cand,
        "corrupted_fraction": corrupted / max(n_cand, 1),
        "predicted_fraction": predicted / max(n_cand, 1),
        "op_fractions": {k: v / total_ops for k, v in ops.items()},
        "op_counts": ops,
        "span_length_words_mean": _mean(words_hist),
        "span_length_tokens_mean": _mean(tokens_hist),
        "span_length_words_histogram": {str(k): v for k, v in sorted(words_hist.items())},
        "span_length_tokens_histogram": {str(k): v for k, v in sorted(tokens_hist.items())},
        "special_tokens_touched": special_touched,
    }


def _mean(hist: dict[int, int]) -> float | None:
    n = sum(hist.values())
    return sum(k * v for k, v in hist.items()) / n if n else None


def _span_hist(chosen, word_ids, words_hist, tokens_hist) -> None:
    """Histogram of merged spans (maximal runs of chosen tokens) in tokens and in words."""
    from clozelab.corruption.units import runs, shift_right

    run_id, n_runs = runs(chosen)
    b, t = chosen.shape
    s_max = int(n_runs.max()) if n_runs.numel() else 0
    if s_max == 0:
        return
    col = run_id.clamp_min(0)
    tokens = torch.zeros(b, t, dtype=torch.long).scatter_add_(1, col, chosen.long())
    new_word = chosen & ((word_ids != shift_right(word_ids, -2)) | ~shift_right(chosen, False))
    words = torch.zeros(b, t, dtype=torch.long).scatter_add_(1, col, new_word.long())
    valid = torch.arange(t).expand(b, t) < n_runs.unsqueeze(-1)
    for hist, values in ((tokens_hist, tokens[valid]), (words_hist, words[valid])):
        for k, v in zip(*torch.unique(values, return_counts=True)):
            hist[int(k)] = hist.get(int(k), 0) + int(v)


def render(clean: dict, out: dict, row: int, tokenizer, mask_id: int) -> str:
    """One corrupted sequence with its changes marked (see the module docstring)."""
    vocab = tokenizer.hf.id_to_token
    ids = out["input_ids"][row][out["attention_mask"][row].bool()].tolist()
    labels = out.get("mlm_labels")
    chosen = out.get("corrupted_mask")
    deletion = out.get("deletion_labels")
    inserted = out.get("insertion_labels")
    moved = out.get("reordered_mask")
    pieces = []
    for pos, tok in enumerate(ids):
        text = vocab(tok) or f"<{tok}>"
        if deletion is not None and int(deletion[row, pos]) == 1:
            pieces.append("~")
        if inserted is not None and int(inserted[row, pos]) == 1:
            text = f"+{text}"
        elif moved is not None and bool(moved[row, pos]):
            text = f"^{text}"
        elif chosen is not None and bool(chosen[row, pos]):
            if tok == mask_id:
                pass
            elif bool(out.get("replaced_mask", torch.zeros_like(chosen))[row, pos]):
                original = int(labels[row, pos]) if labels is not None else -1
                text = f"{{{text}<-{vocab(original) if original >= 0 else '?'}}}"
            else:
                text = f"({text})"
        pieces.append(text)
    return " ".join(pieces)
