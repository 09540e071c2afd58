"""Phrase units from statistical collocations (ERNIE's phrase level, SPECS §10; DESIGN.md §4).

Design: the phrase table is learnt **once** from the training shards with gensim ``Phrases`` (two
layers, so bigrams and tri-/four-grams of words), over words spelled as their token-id sequences
(so any tokenizer works and no text is needed), and cached beside the shards
(``<prepared dir>/corruption/phrases-<min_count>-<threshold>.json``). At collate time each word gets
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
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from clozelab.corruption.corpus_stats import cache_dir, write_json
from clozelab.corruption.units import unit_index, word_units
from clozelab.data.shards import open_split
from clozelab.errors import ClozelabError

log = logging.getLogger(__name__)

MOD = 2_147_483_647  # 2^31 - 1
RADIX = 1_000_003
MIX = 2_654_435_761 % MOD
MAX_PIECES = 64  # pieces of a word that enter its hash
MAX_WORDS = 4
FILTER_MIN_KEYS = 4096


def _powers() -> Tensor:
    out = [1]
    for _ in range(MAX_PIECES - 1):
        out.append(out[-1] * RADIX % MOD)
    return torch.tensor(out, dtype=torch.long)


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


def phrase_source(
    source: str, corpus_dir, min_count: int, threshold: float
) -> PhraseTable | None:
    """Where phrase units come from (``corruption.phrase_source``).

    ``collocations``: the gensim table of the shards under ``corpus_dir`` (None without shards: the
    batch must bring ``phrase_ids``). ``spacy_chunks``: none; the batch brings the noun chunks found
    at preprocessing (``data.phrases=spacy_chunks``), which the shards must hold.
    """
    from clozelab.corruption.base import check_choice

    check_choice(source, "corruption.phrase_source", PHRASE_SOURCES)
    if source == "collocations":
        return PhraseTable.for_corpus(corpus_dir, min_count, threshold)
    if corpus_dir is not None:
        shards = open_split(corpus_dir, verify=False)
        if shards and shards[0].phrase_ids is None:
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
            self.keys[n] = torch.tensor(sorted(set(keys)), dtype=torch.long)
        # Big tables: a bitmap over the low key bits (16 slots per key) rules out almost every
        # word start in one lookup, and only the few that pass are binary-searched (a search from
        # every word start into ~10^5 keys is ~6x slower, all branch mispredictions).
        n_keys = sum(len(k) for k in self.keys.values())
        self.filter = None
        if n_keys > FILTER_MIN_KEYS:
            size = 1 << min(22, (16 * n_keys - 1).bit_length())
            self.filter = torch.zeros(size, dtype=torch.bool)
            for keys in self.keys.values():
                self.filter[keys & (size - 1)] = True

    def __len__(self) -> int:
        return len(self.phrases)

    @classmethod
    def for_corpus(
        cls,
        corpus_dir: str | Path | None,
        min_count: int = 5,
        threshold: float = 10.0,
        max_tokens: int = 5_000_000,
    ) -> PhraseTable | None:
        """Learn (or load the cached) table of the shards under ``corpus_dir``; None without one."""
        if corpus_dir is None:
            return None
        path = cache_dir(corpus_dir) / f"phrases-{min_count}-{threshold:g}-{max_tokens}.json"
        if path.is_file():
            import json

            return cls(json.loads(path.read_text("utf-8")))
        phrases = learn_phrases(corpus_dir, min_count, threshold, max_tokens)
        write_json(path, phrases)
        log.info("Learnt %d phrases from %s (cached at %s)", len(phrases), corpus_dir, path)
        return cls(phrases)

    def phrase_ids(self, batch: Mapping[str, Tensor], eligible: Tensor) -> Tensor:
        """``long [B, T]``: the start word ordinal of the phrase each token lies in, -1 outside."""
        ids = batch["input_ids"]
        b, t = ids.shape
        word, n_words = unit_index(word_units(batch, eligible), eligible)
        w = word.clamp_min(0)
        # offset of each token within its word -> hash term
        positions = torch.arange(t).expand(b, t)
        start = torch.full((b, t), t, dtype=torch.long).scatter_reduce(
            1, w, positions.masked_fill(~eligible, t), "amin"
        )
        offset = (positions - start.gather(1, w)).clamp(0, MAX_PIECES - 1)
        terms = ((ids + 1) * POWERS[offset]) % MOD
        hashes = torch.zeros(b, t, dtype=torch.long).scatter_add_(1, w, terms * eligible) % MOD
        # block of each word: phrases never cross specials
        block = (~eligible).long().cumsum(-1)
        word_block = torch.full((b, t), -1, dtype=torch.long).scatter_reduce(
            1, w, block.masked_fill(~eligible, -1), "amax"
        )
        valid_word = torch.arange(t).expand(b, t) < n_words.unsqueeze(-1)
        match_len = torch.zeros(b, t, dtype=torch.long)
        for n in range(MAX_WORDS, 1, -1):  # loop over phrase lengths (<= 3 iterations)
            keys = self.keys.get(n)
            if keys is None or keys.numel() == 0 or t < n:
                continue
            prefix = torch.zeros(b, t - n + 1, dtype=torch.long)
            same = valid_word[:, n - 1 :].clone()
            for k in range(n - 1):
                prefix = (prefix * MIX + hashes[:, k : t - n + 1 + k] + 1) % MOD
                same &= word_block[:, k : t - n + 1 + k] == word_block[:, n - 1 :]
            key = prefix * (MOD + 1) + hashes[:, n - 1 :]
            hit = self._members(key, keys) & same
            hit = torch.nn.functional.pad(hit, (0, n - 1))
            match_len = torch.where((match_len == 0) & hit, n, match_len)
        # drop a match covered by an earlier match (conservative greedy): the furthest word that
        # any earlier match reaches
        ordinals = torch.arange(t).expand(b, t)
        reach = torch.where(match_len > 0, ordinals + match_len - 1, -1).cummax(-1).values
        covered = torch.zeros_like(match_len, dtype=torch.bool)
        covered[:, 1:] = reach[:, :-1] >= ordinals[:, 1:]
        match_len = match_len.masked_fill(covered, 0)
        # the remaining matches do not overlap: each word belongs to the last start before it
        first = torch.where(match_len > 0, ordinals, -1).cummax(-1).values
        end = first + match_len.gather(1, first.clamp_min(0)) - 1
        phrase_of_word = first.masked_fill((first < 0) | (ordinals > end), -1)
        return phrase_of_word.gather(1, w).masked_fill(~eligible, -1)

    def _members(self, key: Tensor, keys: Tensor) -> Tensor:
        """``bool`` like ``key``: which keys are in the sorted table ``keys``."""
        if self.filter is None:
            at = torch.searchsorted(keys, key).clamp_max_(keys.numel() - 1)
            return keys[at] == key
        hit = self.filter[key & (self.filter.numel() - 1)]
        candidate = key[hit]
        if candidate.numel():
            at = torch.searchsorted(keys, candidate).clamp_max_(keys.numel() - 1)
            hit[hit.clone()] = keys[at] == candidate
        return hit


def _sentences(corpus_dir, max_tokens: int):
    """Sentences as lists of word strings ("12-345": the word's token ids), from the shards."""
    seen = 0
    for shard in open_split(corpus_dir, verify=False):
        bounds = np.asarray(shard.sentences)
        for s in range(len(bounds) - 1):
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            if seen >= max_tokens:
                return
            seen += hi - lo
            tokens = np.asarray(shard.tokens[lo:hi])
            words = np.asarray(shard.word_ids[lo:hi])
            cuts = np.flatnonzero(np.diff(words)) + 1
            yield ["-".join(map(str, piece)) for piece in np.split(tokens, cuts)]


def learn_phrases(corpus_dir, min_count: int, threshold: float, max_tokens: int) -> list:
    """Two gensim ``Phrases`` layers over the shards; returns phrases as per-word token-id lists."""
    from gensim.models.phrases import Phrases

    sentences = list(_sentences(corpus_dir, max_tokens))
    first = Phrases(sentences, min_count=min_count, threshold=threshold, delimiter=" ")
    layered = [first[s] for s in sentences]
    second = Phrases(layered, min_count=min_count, threshold=threshold, delimiter=" ")
    found = set(first.export_phrases()) | set(second.export_phrases())
    phrases = []
    for phrase in sorted(found):
        words = phrase.split(" ")
        if 2 <= len(words) <= MAX_WORDS:
            phrases.append([[int(p) for p in word.split("-")] for word in words])
    return phrases
