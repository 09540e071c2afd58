"""Phrase units from statistical collocations (ERNIE's phrase level, SPECS §10; DESIGN.md §4).

Design: the phrase table is learnt **once** from the training shards with gensim ``Phrases`` (two
layers, so bigrams and tri-/four-grams of words), over words spelled as their token-id sequences
(so any tokenizer works and no text is needed), by the data layer (``data/corpus_stats.py``), and
cached beside the shards (``<prepared dir>/corpus_stats/phrases-*.json``); the corruption receives
it as its ``corpus`` run-time input. At collate time each word gets
a hash of its token ids (vectorised ``scatter_add``); a phrase of n words matches where the
combined hash of n consecutive words (same block, never across [SEP]) is in the sorted table
(``torch.searchsorted``). At a start word the longest match wins; a phrase that overlaps an earlier
*matching* phrase is dropped (a conservative approximation of gensim's left-to-right greedy
join). Hash collisions are possible but rare (word hashes mod 2^31-1, phrases keyed by 62 bits).

Only the preparation runs in Python (over at most ``max_tokens`` tokens); the matching is torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from clozelab.core.errors import ClozelabError, config_error
from clozelab.data.corpus_stats import MAX_PHRASE_WORDS

log = logging.getLogger(__name__)

MOD = 2_147_483_647  # 2^31 - 1
RADIX = 1_000_003
MIX = 2_654_435_761 % MOD
MAX_PIECES = 64  # pieces of a word that enter its hash
MAX_WORDS = MAX_PHRASE_WORDS
FILTER_MIN_KEYS = 4096


def _powers() -> np.ndarray:
    out = [1]
    for _ in range(MAX_PIECES - 1):
        out.append(out[-1] * RADIX % MOD)
    return np.array(out, dtype=np.int64)


POWERS = _powers()


def word_hash(pieces) -> int:
    """Hash of one word (its token ids), equal to the vectorised ``word_hashes``."""
    return (
        sum((int(p) + 1) * int(POWERS[min(k, MAX_PIECES - 1)]) for k, p in enumerate(pieces)) % MOD
    )


def phrase_key(hashes) -> int:
    """62-bit key of a phrase from its word hashes (the last word exactly, the prefix folded)."""
    prefix = 0
    for h in hashes[:-1]:
        prefix = (prefix * MIX + h + 1) % MOD
    return prefix * (MOD + 1) + hashes[-1]


PHRASE_SOURCES = ("collocations", "spacy_chunks")


def phrase_source(source: str, corpus, min_count: int, threshold: float) -> PhraseTable | None:
    """Where phrase units come from (``corruption.phrase_source``).

    ``collocations``: the gensim table of the training corpus (``corpus``, its ``CorpusStats``;
    None without one: the batch must bring ``phrase_ids``). ``spacy_chunks``: none; the batch
    brings the noun chunks found at preprocessing (``data.phrases=spacy_chunks``), which the
    shards must hold.
    """
    from clozelab.corruption.base import check_choice, check_positive_int

    check_choice(source, "corruption.phrase_source", PHRASE_SOURCES)
    if source == "collocations":
        check_positive_int(min_count, "corruption.phrase_min_count")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold <= 0:
            raise config_error(
                "corruption.phrase_threshold",
                threshold,
                "must be a number > 0 (gensim's collocation score threshold)",
                "set corruption.phrase_threshold=10 (gensim's default)",
            )
        return None if corpus is None else PhraseTable(corpus.phrases(min_count, threshold))
    if corpus is not None and not corpus.has_phrase_units():
        raise ClozelabError(
            "corruption.phrase_source=spacy_chunks: the training shards hold no phrase units. "
            "Fix: set data.phrases=spacy_chunks (noun chunks found by spaCy at preprocessing), "
            "or corruption.phrase_source=collocations."
        )
    return None


class PhraseTable:
    """Phrases as token-id sequences per word, with their keys for vectorised matching."""

    def __init__(self, phrases: list[list[list[int]]]):
        self.phrases = phrases
        self.keys = {}
        for n in range(2, MAX_WORDS + 1):
            keys = [phrase_key([word_hash(w) for w in p]) for p in phrases if len(p) == n]
            self.keys[n] = np.array(sorted(set(keys)), dtype=np.int64)
        # Big tables: a bitmap over the low key bits (16 slots per key) rules out almost every
        # word start in one lookup, and only the few that pass are binary-searched (a search from
        # every word start into ~10^5 keys is ~6x slower, all branch mispredictions).
        n_keys = sum(len(k) for k in self.keys.values())
        self.filter = None
        if n_keys > FILTER_MIN_KEYS:
            size = 1 << min(22, (16 * n_keys - 1).bit_length())
            self.filter = np.zeros(size, dtype=bool)
            for keys in self.keys.values():
                self.filter[keys & (size - 1)] = True

    def __len__(self) -> int:
        return len(self.phrases)

    def phrase_ids(self, batch: Mapping[str, Tensor], eligible: Tensor) -> Tensor:
        """``long [B, T]``: the start word ordinal of the phrase each token lies in, -1 outside.

        Vectorised NumPy over the whole batch (a pure function of the batch, ~60 array operations
        on ``[B, T]``; NumPy's per-call overhead is ~4x lower than torch's at these sizes)."""
        ids = batch["input_ids"]
        tokens = ids.cpu().numpy().astype(np.int64, copy=False)
        raw = batch["word_ids"].cpu().numpy()
        candidate = eligible.cpu().numpy()
        b, t = tokens.shape
        rows = np.arange(b)[:, None]
        positions = np.arange(t)
        # words: runs of equal word ids over candidate tokens (as ``unit_index``)
        start = candidate.copy()
        start[:, 1:] &= (raw[:, 1:] != raw[:, :-1]) | ~candidate[:, :-1]
        ordinal = np.cumsum(start, axis=1) - 1
        n_words = ordinal[:, -1] + 1
        end = candidate.copy()
        end[:, :-1] &= start[:, 1:] | ~candidate[:, 1:]
        # word hash: the sum of its tokens' terms, as a difference of running sums
        word_start = np.maximum.accumulate(np.where(start, positions, 0), axis=1)
        offset = np.clip(positions - word_start, 0, MAX_PIECES - 1)
        terms = np.where(candidate, (tokens + 1) * POWERS[offset] % MOD, 0)
        running = np.cumsum(terms, axis=1)
        s_row, s_col = np.nonzero(start)  # word starts and ends, in the same (row, word) order
        e_row, e_col = np.nonzero(end)
        s_word = ordinal[s_row, s_col]
        hashes = np.zeros((b, t), dtype=np.int64)
        hashes[s_row, s_word] = (
            running[e_row, e_col] - running[s_row, s_col] + terms[s_row, s_col]
        ) % MOD
        # block of each word: phrases never cross specials
        word_block = np.full((b, t), -1, dtype=np.int64)
        word_block[s_row, s_word] = np.cumsum(~candidate, axis=1)[s_row, s_col]
        valid_word = positions < n_words[:, None]
        match_len = np.zeros((b, t), dtype=np.int64)
        for n in range(MAX_WORDS, 1, -1):  # loop over phrase lengths (<= 3 iterations)
            keys = self.keys.get(n)
            if keys is None or len(keys) == 0 or t < n:
                continue
            width = t - n + 1
            prefix = np.zeros((b, width), dtype=np.int64)
            same = valid_word[:, n - 1 :].copy()
            for k in range(n - 1):
                prefix = (prefix * MIX + hashes[:, k : width + k] + 1) % MOD
                same &= word_block[:, k : width + k] == word_block[:, n - 1 :]
            key = prefix * (MOD + 1) + hashes[:, n - 1 :]
            hit = np.zeros((b, t), dtype=bool)
            hit[:, :width] = self._members(key, keys) & same
            match_len = np.where((match_len == 0) & hit, n, match_len)
        # drop a match covered by an earlier match (conservative greedy): the furthest word that
        # any earlier match reaches
        reach = np.maximum.accumulate(np.where(match_len > 0, positions + match_len - 1, -1), 1)
        match_len[:, 1:][reach[:, :-1] >= positions[1:]] = 0
        # the remaining matches do not overlap: each word belongs to the last start before it
        first = np.maximum.accumulate(np.where(match_len > 0, positions, -1), axis=1)
        last = first + match_len[rows, first.clip(min=0)] - 1
        phrase_of_word = np.where((first < 0) | (positions > last), -1, first)
        out = np.where(candidate, phrase_of_word[rows, ordinal.clip(min=0)], -1)
        return torch.from_numpy(out).to(ids.device)

    def _members(self, key: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """``bool`` like ``key``: which keys are in the sorted table ``keys``."""
        if self.filter is None:
            at = np.searchsorted(keys, key).clip(max=len(keys) - 1)
            return keys[at] == key
        hit = self.filter[key & (len(self.filter) - 1)]
        candidate = key[hit]
        if len(candidate):
            at = np.searchsorted(keys, candidate).clip(max=len(keys) - 1)
            hit[hit] = keys[at] == candidate
        return hit
