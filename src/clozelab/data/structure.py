"""ERNIE 2.0's structure-aware instances (Sun et al. 2020, SPECS.md §20): data.instances=structure.

Each row is one of two tasks, drawn per chunk of sentences (a share ``reorder_share`` of reordered
paragraphs, the rest sentence-distance pairs), so both tasks train in one stream of batches; the
other row's label is -100:

- **sentence distance** (``sentence_distance_label``): ``[CLS] A [SEP] B [SEP]`` where A is the
  first sentences of a chunk (as BERT's segment pairs) and B is
  0 = the sentences right after A (adjacent), 1 = sentences of the same document that do not touch
  A (at least one sentence between them, before or after A), 2 = sentences of another document.
  The label is uniform over the ones the document allows (A at the document's end has no adjacent
  B, a two-sentence document no non-adjacent one), so the three classes are near 1/3 each. A
  pair too long is cut at A's start and B's end (BERT's counts, ``truncation_counts``), never at
  the A|B junction, so an adjacent B still starts where A ends.
- **sentence reordering** (``permutation_label``): ``[CLS] P [SEP]`` where the paragraph P (a
  chunk of whole sentences) is cut into k segments, k uniform in [1, m] (``reorder_segments``),
  at k - 1 distinct sentence boundaries (token boundaries when P has fewer sentences than k), and
  the segments are shuffled by a uniform permutation of k. The label is the permutation's class
  among the sum over k = 1..m of k! classes (``permutation_class``).

Rows are the segment-pair columns of ``instances.py`` plus ``MAX_SEGMENTS - 1`` cut columns (token
offsets where P's segments start, -1 unused). All randomness comes from the given
``numpy.random.Generator``, one pass over every document per epoch.
"""

from __future__ import annotations

import itertools
import math
from functools import cache

import numpy as np

from clozelab.data.instances import (
    document_table,
    random_segment,
    target_length,
    truncation_counts,
)
from clozelab.data.shards import Shard

#: How each row was made (column ``instances.KIND``).
STRUCTURE_KINDS = ("adjacent", "same_document", "random_document", "reordered")
ADJACENT, SAME_DOCUMENT, RANDOM_DOCUMENT, REORDERED = range(4)
#: The most segments a paragraph is cut into (5! = 120 orders; the paper's m is 3 or 4).
MAX_SEGMENTS = 5
CUTS = 8  # first cut column; columns CUTS .. CUTS + MAX_SEGMENTS - 2
COLUMNS = CUTS + MAX_SEGMENTS - 1


@cache
def _orders(k: int) -> tuple[tuple[int, ...], ...]:
    return tuple(itertools.permutations(range(k)))


def permutation_classes(m: int) -> int:
    """Number of classes of paragraphs cut into 1..m segments: sum of k! for k = 1..m."""
    return sum(math.factorial(k) for k in range(1, m + 1))


def permutation_class(order: tuple[int, ...]) -> int:
    """Class of a shuffled order of k segments (``order[j]``: the original segment now at slot
    j): the classes of fewer segments first, then the order's lexicographic rank among the k!."""
    k = len(order)
    return permutation_classes(k - 1) + _orders(k).index(tuple(order))


def permutation_of(label: int) -> tuple[int, ...]:
    """The order of segments that class ``label`` stands for (inverse of ``permutation_class``)."""
    k = 1
    while label >= permutation_classes(k):
        k += 1
    return _orders(k)[label - permutation_classes(k - 1)]


def _cuts(a: tuple[int, int], boundaries: np.ndarray, k: int, rng) -> tuple[int, list[int]]:
    """k - 1 cut offsets inside ``a``: sentence boundaries when there are enough, else token
    boundaries (k shrinks to the tokens of a very short paragraph)."""
    inner = boundaries[(boundaries > a[0]) & (boundaries < a[1])]
    if len(inner) < k - 1:
        inner = np.arange(a[0] + 1, a[1])
        k = min(k, len(inner) + 1)
    cuts = np.sort(rng.choice(inner, size=k - 1, replace=False)) if k > 1 else []
    return k, [int(c) for c in cuts]


def _extend(starts, first: int, stop: int, target: int) -> tuple[int, int]:
    """Token range of the sentences from ``first`` on, until ``target`` tokens or sentence
    ``stop`` (exclusive)."""
    begin = int(starts[first])
    ends = np.asarray(starts[first + 1 : stop + 1])
    enough = np.nonzero(ends - begin >= target)[0]
    return begin, int(ends[enough[0]] if len(enough) else ends[-1])


def structure_rows(
    shards: list[Shard],
    max_seq_length: int,
    short_seq_prob: float,
    rng: np.random.Generator,
    reorder_share: float = 0.5,
    max_segments: int = 3,
) -> np.ndarray:
    """The structure instance table of one epoch (see the module docstring)."""
    if not 1 <= max_segments <= MAX_SEGMENTS:
        raise ValueError(f"max_segments must lie in [1, {MAX_SEGMENTS}]: {max_segments}")
    pair_tokens, paragraph_tokens = max_seq_length - 3, max_seq_length - 2
    documents = document_table(shards)
    rows: list[list[int]] = []
    for doc_index, (shard_i, doc_i) in enumerate(documents):
        shard = shards[shard_i]
        starts = np.asarray(shard.sentences)
        lo, hi = int(shard.documents[doc_i]), int(shard.documents[doc_i + 1])
        target = target_length(pair_tokens, short_seq_prob, rng)
        first, length, i = lo, 0, lo
        while i < hi:
            length += int(starts[i + 1] - starts[i])
            if i < hi - 1 and length < target:
                i += 1
                continue
            if rng.random() < reorder_share:
                a = (
                    int(starts[first]),
                    min(int(starts[i + 1]), int(starts[first]) + paragraph_tokens),
                )
                k, cuts = _cuts(
                    a, starts[first + 1 : i + 1], int(rng.integers(1, max_segments + 1)), rng
                )
                label = permutation_class(tuple(int(j) for j in rng.permutation(k)))
                row = [shard_i, a[0], a[1], shard_i, a[1], a[1], label, REORDERED]
                rows.append(row + cuts + [-1] * (MAX_SEGMENTS - 1 - len(cuts)))
                first, length, i = i + 1, 0, i + 1
                continue
            n = i + 1 - first
            a_end = first + (
                int(rng.integers(1, n)) if n >= 2 else 1
            )  # A: sentences [first, a_end)
            a = (int(starts[first]), int(starts[a_end]))
            after = list(range(a_end + 1, hi))  # non-adjacent starts: a sentence gap after A
            before = list(range(lo, first - 1))  # ... or B ends before sentence first - 1
            allowed = (
                (ADJACENT, a_end < hi),
                (SAME_DOCUMENT, bool(after or before)),
                (RANDOM_DOCUMENT, len(documents) > 1),
            )
            possible = [label for label, ok in allowed if ok]
            if not possible:  # a one-sentence corpus: nothing to pair
                first, length, i = i + 1, 0, i + 1
                continue
            label = possible[int(rng.integers(len(possible)))]
            target_b = max(1, target - (a[1] - a[0]))
            next_first = a_end  # the sentences not used as A start the next chunk
            if label == ADJACENT:
                b_shard, b = shard_i, _extend(starts, a_end, hi, target_b)
                next_first = int(np.searchsorted(starts, b[1]))
            elif label == SAME_DOCUMENT:
                s = (after + before)[int(rng.integers(len(after) + len(before)))]
                b_shard, b = shard_i, _extend(starts, s, hi if s > a_end else first - 1, target_b)
            else:
                b_shard, b = random_segment(shards, documents, doc_index, target_b, rng)
            cut_a, cut_b = truncation_counts(a[1] - a[0], b[1] - b[0], pair_tokens)
            a, b = (a[0] + cut_a, a[1]), (b[0], b[1] - cut_b)  # the A|B junction stays whole
            row = [shard_i, *a, int(b_shard), *b, label, label]
            rows.append(row + [-1] * (MAX_SEGMENTS - 1))
            first, length, i = next_first, 0, next_first
    return np.asarray(rows, dtype=np.int64).reshape(-1, COLUMNS)
