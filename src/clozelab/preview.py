"""``clozelab preview corruption=NAME [overrides]``: look at a corruption before spending GPU hours.

Prints a few corrupted examples from the configured corpus with a legend of their notation
(``LEGEND``: ``[MASK]`` as is, ``{new<-old}`` for a token replaced by a random one, ``(kept)`` for
a chosen but unchanged token, ``~`` where tokens were deleted, ``^`` on moved tokens, ``+`` on
inserted ones; seq2seq corruptions print ``source => target``, ``Corruption.preview_render``) and
writes ``preview.json`` in the run directory with statistics over ``preview.sequences`` sequences
(``Corruption.preview_stats``). The span lengths count *merged* spans: maximal runs of adjacent
chosen tokens, so two spans drawn side by side count as one longer span (what SBO and the per-span
operations see).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from clozelab.config import build, target_class
from clozelab.corruption.base import IGNORE_INDEX
from clozelab.corruption.runtime import runtime_kwargs
from clozelab.errors import config_error

log = logging.getLogger(__name__)

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


def preview(cfg: DictConfig) -> dict:
    """Corrupt ``preview.sequences`` training sequences; print examples, write ``preview.json``."""
    from clozelab.data.collate import Collator
    from clozelab.data.datamodule import PretrainDataModule
    from clozelab.data.preprocess import prepare
    from clozelab.objectives.rtd import corruption_keys
    from clozelab.validate import validate_corruption, validate_data

    validate_data(cfg)
    validate_corruption(cfg)
    n_sequences = int(cfg.preview.sequences)
    if n_sequences < 1:
        raise config_error("preview.sequences", n_sequences, "must be >= 1", "e.g. 512")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)
    tok = prepared.tokenizer
    cls = target_class(cfg.corruption, "corruption")
    corruption = build(cfg.corruption, "corruption", **runtime_kwargs(cls, tok, prepared))
    data = PretrainDataModule(  # the corruption sets the raw instance length
        prepared,
        corruption,
        instances=cfg.data.instances,
        max_seq_length=cfg.data.max_seq_length,
        short_seq_prob=cfg.data.short_seq_prob,
        sop_single_sentence=cfg.data.get("sop_single_sentence", "random_document"),
        batch_size=cfg.data.batch_size,
        seed=cfg.seed,
    )
    dataset = data.dataset("train", 0)
    collate = Collator(tok.pad_id, None, cfg.seed)
    batch_size = int(cfg.data.batch_size)
    pairs = []
    n = min(n_sequences, len(dataset))
    for start in range(0, n, batch_size):
        clean = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        generator = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + start)
        pairs.append((clean, corruption(clean, generator)))
    stats = corruption.preview_stats(pairs, tok)
    stats["corruption"] = cfg.corruption.get("_target_")
    pair_kinds = data.pair_kinds()  # how the pairs were made: SOP swaps vs random documents
    if pair_kinds is not None:
        stats["pair_kinds"] = pair_kinds
    stats["produces"] = sorted(corruption_keys(cfg.corruption))
    stats["span_lengths"] = MERGED
    examples = [
        corruption.preview_render(pairs[0][0], pairs[0][1], r, tok)
        for r in range(min(int(cfg.preview.examples), pairs[0][0]["input_ids"].shape[0]))
    ]
    stats["examples"] = examples
    (run_dir / "preview.json").write_text(json.dumps(stats, indent=2), "utf-8")
    print(f"corruption: {stats['corruption']}  ({stats['sequences']} sequences)")
    for i, text in enumerate(examples):
        print(f"\n[{i}] {text}")
    print(f"\n{LEGEND}")
    for unit in ("words", "tokens"):
        hist = stats.get(f"span_length_{unit}_histogram")
        if hist:
            counts = " ".join(f"{k}:{v}" for k, v in hist.items())
            print(f"merged span lengths in {unit} (length:count): {counts}")
    if any(stats.get(f"span_length_{unit}_histogram") for unit in ("words", "tokens")):
        print(f"({MERGED})")
    print(
        "\n"
        + json.dumps(
            {k: v for k, v in stats.items() if "histogram" not in k and k != "examples"}, indent=2
        )
    )
    print(f"\nwrote {run_dir / 'preview.json'}")
    return stats
