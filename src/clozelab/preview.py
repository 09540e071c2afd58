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

from clozelab.core.config import build, target_class
from clozelab.core.errors import config_error
from clozelab.corruption.preview import LEGEND, MERGED
from clozelab.corruption.runtime import runtime_kwargs

log = logging.getLogger(__name__)


def preview(cfg: DictConfig) -> dict:
    """Corrupt ``preview.sequences`` training sequences; print examples, write ``preview.json``."""
    from clozelab.data.collate import Collator
    from clozelab.data.datamodule import PretrainDataModule
    from clozelab.data.preprocess import prepare
    from clozelab.objectives.rtd import corruption_keys
    from clozelab.training.validate import validate_corruption, validate_data

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
    # the corruption sets the raw instance length
    data = PretrainDataModule.from_config(cfg.data, prepared, corruption, cfg.seed)
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
