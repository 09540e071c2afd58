"""A deterministic WordPiece vocabulary trainer.

HF ``tokenizers``' WordPiece trainer is not reproducible: it orders equally frequent characters
with an unstable sort and assigns ids in hash-map order, and ties between pair counts are then
broken by those ids, so two trainings on the same text give different vocabularies. Results of a
run must not depend on that, so the vocabulary is learnt here, with every tie broken by the
strings themselves, and only the encoding (greedy longest-match-first, as BERT) is left to
``tokenizers.models.WordPiece``.

The procedure is the one ``tokenizers`` uses for WordPiece: words (after BERT normalisation and
pre-tokenisation) start as characters, non-initial ones carrying the ``##`` prefix; the most
frequent adjacent pair is merged until the vocabulary is full or no pair occurs ``min_frequency``
times.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import pairwise

PREFIX = "##"


def count_words(texts: Iterable[str], normalizer, pre_tokenizer) -> Counter:
    counts: Counter = Counter()
    for text in texts:
        normalized = normalizer.normalize_str(text) if normalizer is not None else text
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalized))
    return counts


def learn_vocabulary(
    word_counts: Counter,
    vocab_size: int,
    special_tokens: list[str],
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
) -> list[str]:
    """The vocabulary, in id order: specials, the alphabet, then merges in the order learnt."""
    chars: Counter = Counter()
    for word, n in word_counts.items():
        for ch in word:
            chars[ch] += n
    alphabet = sorted(chars, key=lambda c: (-chars[c], c))[:limit_alphabet]
    kept = set(alphabet)

    vocab: list[str] = list(special_tokens)
    index: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}

    def intern(token: str) -> int:
        if token not in index:
            index[token] = len(vocab)
            vocab.append(token)
        return index[token]

    words: list[list[int]] = []
    freqs: list[int] = []
    initial: set[str] = set()
    for word in sorted(word_counts):
        symbols = [ch for ch in word if ch in kept]
        if not symbols:
            continue
        pieces = [symbols[0]] + [PREFIX + ch for ch in symbols[1:]]
        initial.update(pieces)
        words.append(pieces)  # strings for now; ids once the alphabet is interned
        freqs.append(word_counts[word])
    for token in sorted(initial, key=lambda t: (t.startswith(PREFIX), t)):
        intern(token)
    words_ids = [[index[p] for p in pieces] for pieces in words]

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (symbols, n) in enumerate(zip(words_ids, freqs)):
        for pair in pairwise(symbols):
            pair_counts[pair] += n
            where[pair].add(w)

    def entry(pair):
        return (-pair_counts[pair], vocab[pair[0]], vocab[pair[1]], pair)

    heap = [entry(p) for p in pair_counts]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, _, _, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if -neg != count:  # stale entry: re-queue with its current count
            if count > 0:
                heapq.heappush(heap, entry(pair))
            continue
        if count < min_frequency:
            break
        a, b = pair
        merged = intern(
            vocab[a] + vocab[b][len(PREFIX) :]
            if vocab[b].startswith(PREFIX)
            else vocab[a] + vocab[b]
        )
        touched: set[tuple[int, int]] = set()
        for w in sorted(where.pop(pair, ())):
            symbols, n = words_ids[w], freqs[w]
            for old in pairwise(symbols):
                pair_counts[old] -= n
                touched.add(old)
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words_ids[w] = out
            for new in pairwise(out):
                pair_counts[new] += n
                where[new].add(w)
                touched.add(new)
        for p in touched:
            if pair_counts.get(p, 0) <= 0:
                pair_counts.pop(p, None)
                where.pop(p, None)
            elif p != pair:
                heapq.heappush(heap, entry(p))
        pair_counts.pop(pair, None)
    return vocab
