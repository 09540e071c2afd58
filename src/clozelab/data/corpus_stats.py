"""Corpus tables some corruptions need, computed once from the training shards and cached beside
them (``<prepared dir>/corruption/``): the unigram token counts (SpanBERT's replacement
distribution, SPECS §3) and the phrase table (``phrases.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clozelab.core import rundir
from clozelab.core.rundir import atomic_write
from clozelab.data.shards import open_split


def cache_dir(corpus_dir: str | Path) -> Path:
    path = Path(corpus_dir).parent / "corruption"
    path.mkdir(parents=True, exist_ok=True)
    return path


def unigram_counts(corpus_dir: str | Path, vocab_size: int) -> torch.Tensor:
    """``float64 [vocab_size]`` token counts over every training shard (cached)."""
    path = cache_dir(corpus_dir) / f"unigram-{vocab_size}.npy"
    if path.is_file():
        counts = np.load(path)
    else:
        counts = np.zeros(vocab_size, dtype=np.int64)
        for shard in open_split(corpus_dir, verify=False):
            if len(shard.tokens):
                counts += np.bincount(np.asarray(shard.tokens), minlength=vocab_size)[:vocab_size]

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, counts)

        atomic_write(path, write)
    return torch.from_numpy(counts.astype(np.float64))


def write_json(path: Path, payload) -> None:
    rundir.write_json(path, payload, indent=None, sort_keys=False)
