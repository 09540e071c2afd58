"""Dialogue instances for ERNIE's dialogue LM (DLM, SPECS.md §11).

An instance is ``[CLS] U1 [SEP] U2 [SEP] U3 [SEP]`` with one role id per token (Q = 0, R = 1; each
utterance's [SEP] takes its role, [CLS] the first utterance's) and a real/fake ``dialogue_label``.

Triples, enumerated once per split in corpus order (exact duplicates once):

- windows: three consecutive turns of one dialogue whose role pattern is one of ``patterns``
  (QRQ, QRR, QQR); chatterbot's alternating conversations give QRQ windows.
- threads (``threads=True``; our reading of the paper's Tieba threads, where several replies
  answer one post): the query-response pairs are the adjacent (Q, R) turns of every dialogue; a
  query answered by several distinct responses gives QRR triples (the query and two consecutive of
  its responses), a response given to several distinct queries gives QQR triples (two consecutive
  of its queries and the response). Most chatterbot conversations are single Q -> R pairs, so
  this is where most of its QRR and QQR triples come from.

Real/fake (our assumptions; the paper only says a query or response is replaced by a random
sentence): each epoch, with probability ``fake_rate`` (0.5) one uniformly chosen utterance of the
three is replaced by a uniformly drawn *other* utterance of the split. Utterances are
deduplicated by their token ids, so a fake differs from the real triple in exactly that utterance.
Label convention: **1 = real, 0 = fake** (ERNIE's, positive = 1; BERT's NSP uses 1 = random).

Truncation to ``max_seq_length``: the longest utterance loses its last token until the triple
fits (of equally long ones, the later one first), so each utterance keeps at least one token.

Everything random comes from ``numpy.random.default_rng([seed, epoch, pass, split, DIALOGUE])``:
an item is a function of (seed, epoch, stream position), in any worker and after a resume.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from clozelab.core.errors import ClozelabError
from clozelab.data.dataset import local_word_ids
from clozelab.data.dialogue import Dialogue, Q, R

PATTERNS = ("QRQ", "QRR", "QQR")
REAL, FAKE = 1, 0
# Columns of a dialogue instance table.
U1, U2, U3, LABEL, REPLACED = range(5)
DIALOGUE = 0xD1A  # salt: dialogue draws never coincide with the text builders'


def pattern_of(roles) -> str:
    return "".join("Q" if r == Q else "R" for r in roles)


@dataclass
class UtterancePool:
    """Distinct utterances of one split as token ids: ``tokens[offsets[i]:offsets[i+1]]`` (and
    ``words``, each token's word index within its utterance)."""

    tokens: np.ndarray
    words: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def utterance(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[lo:hi], self.words[lo:hi]


def encode_dialogues(dialogues: list[Dialogue], tokenizer) -> tuple[UtterancePool, list]:
    """Tokenise every turn once; dialogues become lists of (utterance index, role), utterances
    with equal token ids share one index (turns that tokenise to nothing are dropped)."""
    texts = list(dict.fromkeys(text for dialogue in dialogues for text, _ in dialogue))
    index: dict[tuple, int] = {}
    by_text: dict[str, int] = {}
    tokens, words = [], []
    for text, enc in zip(texts, tokenizer.encode_batch(texts)):
        key = tuple(enc.ids)
        if not key:
            continue
        if key not in index:
            index[key] = len(index)
            tokens.append(np.asarray(enc.ids, dtype=np.int64))
            words.append(np.asarray([-1 if w is None else w for w in enc.word_ids], np.int64))
        by_text[text] = index[key]
    lengths = [len(t) for t in tokens]
    pool = UtterancePool(
        np.concatenate(tokens) if tokens else np.zeros(0, np.int64),
        np.concatenate(words) if words else np.zeros(0, np.int64),
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
    )
    encoded = [[(by_text[t], r) for t, r in d if t in by_text] for d in dialogues]
    return pool, encoded


def enumerate_triples(
    dialogues: list[list[tuple[int, int]]], patterns=PATTERNS, threads: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(triples [N, 3]`` utterance indices, ``pattern [N]`` index into ``PATTERNS``)."""
    wanted = set(patterns)
    rows: dict[tuple[int, int, int], int] = {}  # insertion-ordered, duplicates once

    def add(utterances, pattern):
        if pattern in wanted and len(set(utterances)) == 3:
            rows.setdefault(tuple(utterances), PATTERNS.index(pattern))

    for turns in dialogues:
        for i in range(len(turns) - 2):
            window = turns[i : i + 3]
            add([u for u, _ in window], pattern_of([r for _, r in window]))
    if threads:
        responses: dict[int, list[int]] = {}
        queries: dict[int, list[int]] = {}
        for turns in dialogues:
            for (q, role_q), (r, role_r) in itertools.pairwise(turns):
                if role_q == Q and role_r == R and q != r:
                    responses.setdefault(q, [])
                    if r not in responses[q]:
                        responses[q].append(r)
                    queries.setdefault(r, [])
                    if q not in queries[r]:
                        queries[r].append(q)
        for q, answers in responses.items():
            for a, b in itertools.pairwise(answers):
                add([q, a, b], "QRR")
        for r, asked in queries.items():
            for a, b in itertools.pairwise(asked):
                add([a, b, r], "QQR")
    triples = np.asarray(list(rows), dtype=np.int64).reshape(-1, 3)
    return triples, np.asarray(list(rows.values()), dtype=np.int64)


def role_ids(pattern: int) -> tuple[int, int, int]:
    return tuple(Q if c == "Q" else R for c in PATTERNS[pattern])


def fake_table(
    triples: np.ndarray, n_utterances: int, fake_rate: float, rng: np.random.Generator
) -> np.ndarray:
    """``[N, 5]``: U1, U2, U3 (after replacement), LABEL (1 real, 0 fake), REPLACED (0..2, or -1).

    Every row draws (fake?, which utterance, which replacement) so the table's randomness does not
    depend on earlier rows' outcomes; the replacement is uniform over the other utterances."""
    n = len(triples)
    if n_utterances < 2:
        raise ClozelabError(
            "data.dialogue.corpus: fakes need at least two distinct utterances, the split has "
            f"{n_utterances}. Fix: use a larger dialogue corpus."
        )
    fake = rng.random(n) < fake_rate
    position = rng.integers(0, 3, n)
    other = rng.integers(0, n_utterances - 1, n)
    rows = np.arange(n)
    original = triples[rows, position]
    other = other + (other >= original)  # uniform over the n - 1 utterances that differ
    table = np.empty((n, 5), dtype=np.int64)
    table[:, :3] = triples
    table[rows[fake], position[fake]] = other[fake]
    table[:, LABEL] = np.where(fake, FAKE, REAL)
    table[:, REPLACED] = np.where(fake, position, -1)
    return table


def truncated_lengths(lengths, budget: int) -> np.ndarray:
    """Utterance lengths after removing the last token of the longest (the later of equally long
    ones) until their sum fits ``budget``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.sum() <= budget:
        return lengths.copy()
    lo, hi = 0, int(lengths.max())  # the largest cap c with sum(min(l, c)) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if np.minimum(lengths, mid).sum() <= budget else (lo, mid - 1)
    out = np.minimum(lengths, lo)
    spare = budget - int(out.sum())
    out[np.nonzero(lengths > lo)[0][:spare]] += 1
    return out


@dataclass
class DialogueCorpus:
    """One split: its utterance pool and its triples (with their role patterns)."""

    pool: UtterancePool
    triples: np.ndarray
    patterns: np.ndarray

    def __len__(self) -> int:
        return len(self.triples)

    @classmethod
    def build(cls, dialogues: list[Dialogue], tokenizer, patterns=PATTERNS, threads=True):
        pool, encoded = encode_dialogues(dialogues, tokenizer)
        triples, kinds = enumerate_triples(encoded, patterns, threads)
        return cls(pool, triples, kinds)

    def pattern_counts(self) -> dict[str, int]:
        return {p: int((self.patterns == i).sum()) for i, p in enumerate(PATTERNS)}


class DialogueDataset(Dataset):
    """Item ``q`` (a position in this epoch's stream of triples) as numpy arrays.

    The stream runs through the triples in passes; pass ``c = q // len(corpus)`` has its own
    order (``shuffle``) and its own real/fake table, both drawn from (seed, epoch, pass, split).
    ``epoch`` is set by the loader that owns the dataset.
    """

    def __init__(
        self,
        corpus: DialogueCorpus,
        cls_id: int,
        sep_id: int,
        max_seq_length: int,
        fake_rate: float,
        seed: int,
        split: int,
        shuffle: bool,
        epoch: int = 0,
    ):
        if len(corpus) == 0:
            raise ClozelabError(
                "data.dialogue.corpus: no dialogue triple (QRQ/QRR/QQR) in this split. Fix: use "
                "dialogues of three or more turns, or queries/responses shared across dialogues "
                "(data.dialogue.threads=true), or a larger corpus."
            )
        self.corpus, self.cls_id, self.sep_id = corpus, cls_id, sep_id
        self.max_seq_length, self.fake_rate = max_seq_length, fake_rate
        self.seed, self.split, self.shuffle, self.epoch = seed, split, shuffle, epoch
        self._passes: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.corpus)

    def draws(self, epoch: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        """(order, real/fake table) of pass ``c`` of ``epoch`` (cached: the last few passes)."""
        key = (epoch, c)
        if key not in self._passes:
            rng = np.random.default_rng([self.seed, epoch, c, self.split, DIALOGUE])
            n = len(self.corpus)
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            table = fake_table(self.corpus.triples, len(self.corpus.pool), self.fake_rate, rng)
            if len(self._passes) >= 4:
                self._passes.pop(next(iter(self._passes)))
            self._passes[key] = (order, table)
        return self._passes[key]

    def row(self, q: int) -> tuple[np.ndarray, int]:
        """(table row, triple index) of stream position ``q`` in the current epoch."""
        c, offset = divmod(int(q), len(self.corpus))
        order, table = self.draws(self.epoch, c)
        triple = int(order[offset])
        return table[triple], triple

    def __getitem__(self, q: int) -> dict[str, np.ndarray]:
        row, triple = self.row(q)
        roles = role_ids(int(self.corpus.patterns[triple]))
        parts = [self.corpus.pool.utterance(int(u)) for u in row[:3]]
        keep = truncated_lengths([len(t) for t, _ in parts], self.max_seq_length - 4)
        tokens, words, role, sentence = [[self.cls_id]], [[-1]], [[roles[0]]], [[-1]]
        for k, ((ids, word), n) in enumerate(zip(parts, keep)):
            tokens += [ids[:n], [self.sep_id]]
            words += [word[:n], [-1]]  # renumbered below; a [SEP] always starts a new word
            role += [np.full(n + 1, roles[k])]
            sentence += [np.full(n, k), [-1]]
        input_ids = np.concatenate(tokens).astype(np.int64)
        special = np.zeros(len(input_ids), dtype=bool)
        special[np.cumsum([1, *(keep + 1)]) - 1] = True  # [CLS] and the three [SEP]s
        return {
            "index": np.int64(q),
            "input_ids": input_ids,
            "token_type_ids": np.zeros(len(input_ids), dtype=np.int64),
            "role_ids": np.concatenate(role).astype(np.int64),
            "special_tokens_mask": special.astype(np.int64),
            "word_ids": local_word_ids(np.concatenate(words).astype(np.int64), special),
            "entity_ids": np.full(len(input_ids), -1, dtype=np.int64),
            "sentence_ids": np.concatenate(sentence).astype(np.int64),
            "dialogue_label": np.int64(row[LABEL]),
        }


def split_dialogues(dialogues: list, validation_fraction: float) -> tuple[list, list]:
    """Every ``round(1 / fraction)``-th dialogue held out (as the text corpus's documents)."""
    if validation_fraction <= 0:
        return list(dialogues), []
    every = round(1 / validation_fraction)
    train = [d for i, d in enumerate(dialogues) if i % every != every - 1]
    return train, [d for i, d in enumerate(dialogues) if i % every == every - 1]
