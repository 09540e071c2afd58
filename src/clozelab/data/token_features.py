"""Per-token labels the corpus gives without external annotation (ERNIE 2.0, SPECS.md §20).

An instance builder's dataset adds them to an item when an objective asks for them (its
``requires``), so they travel through padding and corruption like ``word_ids``:

- ``case_labels``: on the first token of each word, 1 when the word starts with an upper-case
  letter in the original text, 0 otherwise (-100 on the other tokens): capitalisation prediction.
  The flags are stored in the shards at preprocessing (``data.case_flags=true``), read from the
  cased text before any lowercasing, so the task works with an uncased vocabulary (its point: the
  input has lost the case). With a cased vocabulary the input shows the case and the task is
  trivial: ``objective.capitalization`` refuses ``tokenizer.lowercase=false``.
- ``token_document_labels``: 1 when the token's id occurs in its document outside the segment
  the token was read from, 0 otherwise: token-document relation. A segment is the contiguous
  token range of the instance that holds the token (A or B of a pair, a packed chunk).

Both are -100 on special tokens and padding (the collator pads with -100).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from clozelab.core.batch import IGNORE_INDEX
from clozelab.data.shards import Shard

TOKEN_FEATURES = ("case_labels", "token_document_labels")


def case_labels(words: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Labels of one contiguous segment: ``flags`` on each word's first token (``words``: the
    shard-global word index of each token), -100 elsewhere."""
    first = np.ones(len(words), dtype=bool)
    first[1:] = words[1:] != words[:-1]
    return np.where(first, flags.astype(np.int64), IGNORE_INDEX)


class DocumentCounts:
    """Token-id counts of documents, computed on first use and kept for the ``capacity`` most
    recently used documents (the instances of an epoch visit documents in shuffled order)."""

    def __init__(self, shards: list[Shard], capacity: int = 256):
        self.shards, self.capacity = shards, capacity
        self._doc_token_starts = [
            np.asarray(s.sentences)[np.asarray(s.documents)] for s in shards
        ]  # [n_documents + 1] token offsets of each shard's documents
        self._cache: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def document_of(self, shard_i: int, positions: np.ndarray) -> np.ndarray:
        """Document index (within the shard) of each token position."""
        return np.searchsorted(self._doc_token_starts[shard_i], positions, side="right") - 1

    def counts(self, shard_i: int, doc: int) -> tuple[np.ndarray, np.ndarray]:
        """(sorted distinct token ids, their counts) of document ``doc`` of shard ``shard_i``."""
        key = (shard_i, doc)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        lo, hi = self._doc_token_starts[shard_i][doc : doc + 2]
        ids, counts = np.unique(np.asarray(self.shards[shard_i].tokens[lo:hi]), return_counts=True)
        self._cache[key] = (ids, counts)
        if len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return ids, counts

    def labels(self, shard_i: int, start: int, end: int) -> np.ndarray:
        """Token-document labels of the segment [start, end) of shard ``shard_i``: 1 where the
        token id occurs in the token's document outside the segment."""
        tokens = np.asarray(self.shards[shard_i].tokens[start:end], dtype=np.int64)
        docs = self.document_of(shard_i, np.arange(start, end))
        out = np.zeros(len(tokens), dtype=np.int64)
        for doc in np.unique(docs):
            here = docs == doc
            seg_ids, inverse, seg_counts = np.unique(
                tokens[here], return_inverse=True, return_counts=True
            )
            ids, counts = self.counts(shard_i, int(doc))
            in_doc = counts[np.searchsorted(ids, seg_ids)]  # every segment id is in its document
            out[here] = (in_doc > seg_counts)[inverse]
        return out
