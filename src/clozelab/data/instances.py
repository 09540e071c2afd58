"""Instance builders: which token ranges of the shards form one training sequence.

- ``segment_pairs``: BERT's ``[CLS] A [SEP] B [SEP]`` with 50% random next sentence, exactly as
  SPECS.md §6 (short_seq_prob, random-document retries, sentence rewind, truncation rule, label
  0 = is next, 1 = random).
- ``segment_pairs(..., sentence_order=True)``: ALBERT's SOP pairs (SPECS.md §7): the same chunking;
  A and B are swapped with probability 0.5 (label 1 = swapped, 0 = original order), before
  truncation. A one-sentence chunk has no sentence boundary to split at; ``single_sentence`` says
  what it becomes: ``random_document`` (ALBERT's code: a random-document B, label 1, the NSP-style
  leak of albert#234), ``split`` (the paper's swap-only SOP: A and B meet at a uniform token
  boundary inside the sentence, then the same 50% swap; a one-token sentence is skipped) or
  ``skip`` (no instance).
- ``sentence_pairs``: RoBERTa's SENTENCE-PAIR (Liu et al. 2019, §4.2): ``[CLS] A [SEP] B [SEP]``
  where A is one natural sentence and B the sentence after it (label 0) or, with probability 0.5
  (always at a document's last sentence), one sentence of another document (label 1); a sentence
  not used as B starts the next pair. Pairs are far shorter than ``max_seq_length``.
- ``packed``: RoBERTa's FULL-SENTENCES (``cross_documents=True``: contiguous sentences that may
  cross a document boundary, where a ``[SEP]`` is inserted) and DOC-SENTENCES (never crosses one).

Builders return int64 arrays of token offsets into the shards, so an epoch's instances of a corpus
of any size cost a few bytes each. All randomness comes from the given ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np

from clozelab.data.shards import Shard

# Columns of a segment-pair instance table.
A_SHARD, A_START, A_END, B_SHARD, B_START, B_END, LABEL, KIND = range(8)
#: How each pair was made (column KIND): in document order, B from a random document, A and B
#: swapped, and the same two for a one-sentence chunk split at a token boundary.
PAIR_KINDS = ("in_order", "random_document", "swapped", "split_in_order", "split_swapped")
IN_ORDER, RANDOM_DOCUMENT, SWAPPED, SPLIT_IN_ORDER, SPLIT_SWAPPED = range(5)
#: What a one-sentence chunk becomes in sentence-order instances (``data.sop_single_sentence``).
SINGLE_SENTENCE = ("random_document", "split", "skip")
# Columns of a packed instance table.
P_SHARD, P_START, P_END = range(3)

#: Every instance kind, and the batch keys its batches carry besides the shared ones (DESIGN §3):
#: the one table of instance kinds (``data.instances``) that builders, objectives and checks use.
INSTANCE_KEYS = {
    "segment_pair": ("next_sentence_label",),
    "sentence_pair": ("next_sentence_label",),
    "full_sentences": (),
    "doc_sentences": (),
    "sentence_order": ("sentence_order_label",),
    "structure": ("sentence_distance_label", "permutation_label"),  # ERNIE 2.0 (structure.py)
}
KINDS = tuple(INSTANCE_KEYS)
#: Kinds built as [CLS] A [SEP] B [SEP] pairs, and the batch key their label goes to.
PAIR_LABEL_KEYS = {
    kind: INSTANCE_KEYS[kind][0] for kind in ("segment_pair", "sentence_pair", "sentence_order")
}
#: Kinds whose rows may hold two segments (three special tokens).
TWO_SEGMENT_KINDS = (*PAIR_LABEL_KEYS, "structure")


def truncation_counts(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """How many tokens BERT's truncate_seq_pair removes from A and from B.

    It removes one token at a time from the longer segment (B on a tie) until the pair fits: first
    the longer shrinks to the length of the shorter, then they alternate starting with B.
    """
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return 0, 0
    gap = abs(len_a - len_b)
    first = min(excess, gap)
    rest = excess - first
    remove_a, remove_b = (first, 0) if len_a > len_b else (0, first)
    return remove_a + rest // 2, remove_b + rest - rest // 2


def document_table(shards: list[Shard]) -> np.ndarray:
    """[n_documents, 2] (shard index, document index within the shard)."""
    parts = [
        np.stack([np.full(s.n_documents, i), np.arange(s.n_documents)], axis=1)
        for i, s in enumerate(shards)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)


def target_length(max_num_tokens: int, short_seq_prob: float, rng: np.random.Generator) -> int:
    """A document's chunk length: ``max_num_tokens``, or with probability ``short_seq_prob`` a
    uniform shorter one in [2, max_num_tokens] (BERT's short_seq_prob)."""
    if rng.random() < short_seq_prob:
        return int(rng.integers(2, max_num_tokens + 1))
    return max_num_tokens


def segment_pairs(
    shards: list[Shard],
    max_seq_length: int,
    short_seq_prob: float,
    rng: np.random.Generator,
    sentence_order: bool = False,
    single_sentence: str = "random_document",
) -> np.ndarray:
    """BERT next-sentence-prediction instances (or, with ``sentence_order``, ALBERT's
    sentence-order instances, one-sentence chunks handled by ``single_sentence``), one pass over
    every document."""
    if single_sentence not in SINGLE_SENTENCE:
        raise ValueError(f"single_sentence must be one of {SINGLE_SENTENCE}: {single_sentence!r}")
    paper_sop = sentence_order and single_sentence != "random_document"
    max_num_tokens = max_seq_length - 3
    documents = document_table(shards)
    offsets = [np.asarray(s.sentences) for s in shards]
    bounds = [np.asarray(s.documents) for s in shards]
    rows: list[tuple[int, ...]] = []
    for doc_index, (shard_i, doc_i) in enumerate(documents):
        starts = offsets[shard_i]
        lo, hi = int(bounds[shard_i][doc_i]), int(bounds[shard_i][doc_i + 1])
        target = target_length(max_num_tokens, short_seq_prob, rng)
        chunk_start, length, i = lo, 0, lo
        while i < hi:
            length += int(starts[i + 1] - starts[i])
            if i == hi - 1 or length >= target:
                n = i + 1 - chunk_start
                a_sentences = int(rng.integers(1, n)) if n >= 2 else 1
                a = (int(starts[chunk_start]), int(starts[chunk_start + a_sentences]))
                end = int(starts[i + 1])
                split = 0
                if n == 1 and paper_sop:
                    if single_sentence == "skip" or end - a[0] < 2:
                        chunk_start, length, i = i + 1, 0, i + 1
                        continue
                    a = (a[0], int(rng.integers(a[0] + 1, end)))  # a token boundary inside
                    split = SPLIT_IN_ORDER
                if (n == 1 and not split) or (not sentence_order and rng.random() < 0.5):
                    label, kind = 1, RANDOM_DOCUMENT
                    b_shard, b = random_segment(
                        shards, documents, doc_index, target - (a[1] - a[0]), rng
                    )
                    i -= n - a_sentences  # the unused sentences start the next chunk
                elif sentence_order and rng.random() < 0.5:  # swapped, then truncated
                    label, kind, b_shard, b = 1, SWAPPED, shard_i, a
                    a = (a[1], end)
                else:
                    label, kind, b_shard, b = 0, IN_ORDER, shard_i, (a[1], end)
                if split:
                    kind = SPLIT_SWAPPED if label else SPLIT_IN_ORDER
                row = truncate_pair(shard_i, a, b_shard, b, label, max_num_tokens, rng)
                rows.append((*row, kind))
                chunk_start, length = i + 1, 0
            i += 1
    return np.asarray(rows, dtype=np.int64).reshape(-1, 8)


def sentence_pairs(
    shards: list[Shard], max_seq_length: int, rng: np.random.Generator
) -> np.ndarray:
    """RoBERTa's SENTENCE-PAIR instances: one sentence A and one sentence B (next or random)."""
    max_num_tokens = max_seq_length - 3
    documents = document_table(shards)
    rows: list[tuple[int, ...]] = []
    for doc_index, (shard_i, doc_i) in enumerate(documents):
        starts = np.asarray(shards[shard_i].sentences)
        lo, hi = int(shards[shard_i].documents[doc_i]), int(shards[shard_i].documents[doc_i + 1])
        i = lo
        while i < hi:
            a = (int(starts[i]), int(starts[i + 1]))
            if i + 1 < hi and rng.random() >= 0.5:
                label, b_shard, b = 0, int(shard_i), (a[1], int(starts[i + 2]))
                i += 2
            else:  # B: one sentence of another document; sentence i + 1 starts the next pair
                label = 1
                b_shard, b = _random_sentence(shards, documents, doc_index, rng)
                i += 1
            kind = IN_ORDER if label == 0 else RANDOM_DOCUMENT
            row = truncate_pair(int(shard_i), a, b_shard, b, label, max_num_tokens, rng)
            rows.append((*row, kind))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 8)


def other_document(documents, doc_index, rng) -> tuple[int, int]:
    """(shard, document) of a random document other than ``doc_index`` (10 tries, as BERT)."""
    other = doc_index
    for _ in range(10):
        other = int(rng.integers(0, len(documents)))
        if other != doc_index:
            break
    shard_i, doc_i = documents[other]
    return int(shard_i), int(doc_i)


def _random_sentence(shards, documents, doc_index, rng):
    shard_i, doc_i = other_document(documents, doc_index, rng)
    shard = shards[shard_i]
    sentence = int(rng.integers(int(shard.documents[doc_i]), int(shard.documents[doc_i + 1])))
    return shard_i, (int(shard.sentences[sentence]), int(shard.sentences[sentence + 1]))


def random_segment(shards, documents, doc_index, target_b, rng):
    """B from a random other document (10 tries), from a random sentence until >= target_b."""
    shard_i, doc_i = other_document(documents, doc_index, rng)
    shard = shards[shard_i]
    lo, hi = int(shard.documents[doc_i]), int(shard.documents[doc_i + 1])
    start_sentence = int(rng.integers(lo, hi))
    starts = shard.sentences
    begin = int(starts[start_sentence])
    # first sentence end at which B reaches target_b (or the end of the document)
    ends = np.asarray(starts[start_sentence + 1 : hi + 1])
    enough = np.nonzero(ends - begin >= target_b)[0]
    end = int(ends[enough[0]] if len(enough) else ends[-1])
    return int(shard_i), (begin, end)


def truncate_pair(a_shard, a, b_shard, b, label, max_num_tokens, rng):
    remove_a, remove_b = truncation_counts(a[1] - a[0], b[1] - b[0], max_num_tokens)
    front_a = int(rng.binomial(remove_a, 0.5)) if remove_a else 0
    front_b = int(rng.binomial(remove_b, 0.5)) if remove_b else 0
    return (
        a_shard,
        a[0] + front_a,
        a[1] - (remove_a - front_a),
        b_shard,
        b[0] + front_b,
        b[1] - (remove_b - front_b),
        label,
    )


def packed(shards: list[Shard], max_seq_length: int, cross_documents: bool) -> np.ndarray:
    """FULL-SENTENCES (cross_documents) or DOC-SENTENCES: greedy packing of whole sentences.

    A sentence longer than the budget is split into budget-sized pieces. An instance never spans
    two shards. With cross_documents, each document boundary inside an instance costs one token
    (the ``[SEP]`` inserted there).
    """
    budget = max_seq_length - 2
    rows: list[tuple[int, int, int]] = []
    for shard_i, shard in enumerate(shards):
        starts = np.asarray(shard.sentences)
        doc_starts = np.zeros(len(starts), dtype=bool)
        doc_starts[np.asarray(shard.documents[:-1])] = True
        begin, used = None, 0
        for s in range(len(starts) - 1):
            lo, hi = int(starts[s]), int(starts[s + 1])
            new_doc = bool(doc_starts[s])
            if begin is not None and new_doc and not cross_documents:
                rows.append((shard_i, begin, lo))
                begin, used = None, 0
            extra = 1 if (begin is not None and new_doc) else 0
            if begin is not None and used + extra + (hi - lo) > budget:
                rows.append((shard_i, begin, lo))
                begin, used, extra = None, 0, 0
            while hi - lo > budget:  # an over-long sentence on its own
                rows.append((shard_i, lo, lo + budget))
                lo += budget
            if begin is None:
                begin = lo
            used += extra + (hi - lo)
        if begin is not None and used > 0:
            rows.append((shard_i, begin, int(starts[-1])))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def lengths(kind: str, table: np.ndarray) -> np.ndarray:
    """Tokens of each instance with its [CLS]/[SEP]s (the [SEP]s FULL-SENTENCES inserts at
    document boundaries not counted): what it adds to a token budget."""
    if kind in TWO_SEGMENT_KINDS:
        return table[:, A_END] - table[:, A_START] + table[:, B_END] - table[:, B_START] + 3
    return table[:, P_END] - table[:, P_START] + 2


def pair_kind_shares(table: np.ndarray, names: tuple[str, ...] = PAIR_KINDS) -> dict[str, float]:
    """Share of each way a pair was made (``names``: ``PAIR_KINDS``, or the structure rows'
    kinds), over the rows of ``table``; the pairs' negatives (label 1) are ``random_document``,
    ``swapped`` and ``split_swapped``."""
    counts = np.bincount(table[:, KIND], minlength=len(names)) if len(table) else None
    total = max(len(table), 1)
    return {
        name: (round(float(counts[k]) / total, 4) if counts is not None else 0.0)
        for k, name in enumerate(names)
    }


def build(
    kind: str, shards, max_seq_length, short_seq_prob, rng, sop_single_sentence="random_document"
) -> np.ndarray:
    """The instance table of ``kind``; ``sop_single_sentence`` only matters to sentence_order."""
    if kind == "sentence_pair":
        return sentence_pairs(shards, max_seq_length, rng)
    if kind in PAIR_LABEL_KEYS:
        order = kind == "sentence_order"
        return segment_pairs(
            shards,
            max_seq_length,
            short_seq_prob,
            rng,
            sentence_order=order,
            single_sentence=sop_single_sentence,
        )
    if kind in ("full_sentences", "doc_sentences"):
        return packed(shards, max_seq_length, cross_documents=kind == "full_sentences")
    raise ValueError(f"unknown instance kind {kind!r}; expected one of {KINDS}")
