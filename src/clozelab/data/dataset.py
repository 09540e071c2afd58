"""Assemble instances (token ranges of the shards) into model inputs."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from clozelab.data import instances as inst
from clozelab.data.shards import Shard


def local_word_ids(raw: np.ndarray, special: np.ndarray) -> np.ndarray:
    """Shard-global word indices -> 0..n-1 within the sequence, -1 on special tokens."""
    change = np.ones(len(raw), dtype=bool)
    change[1:] = (raw[1:] != raw[:-1]) | special[:-1]
    change &= ~special
    ids = np.cumsum(change) - 1
    ids[special] = -1
    return ids


class InstanceDataset(Dataset):
    """Item ``i`` of an instance table as numpy arrays (no padding, no corruption)."""

    def __init__(self, shards: list[Shard], table: np.ndarray, kind: str, cls_id: int, sep_id: int):
        if kind not in inst.KINDS:
            raise ValueError(f"unknown instance kind {kind!r}")
        self.shards, self.table, self.kind = shards, table, kind
        self.cls_id, self.sep_id = cls_id, sep_id
        self._doc_token_starts = [
            np.asarray(s.sentences)[np.asarray(s.documents[:-1])] for s in shards
        ]

    def __len__(self) -> int:
        return len(self.table)

    def _segment(self, shard_i: int, start: int, end: int, insert_separators: bool):
        shard = self.shards[shard_i]
        tokens = np.asarray(shard.tokens[start:end], dtype=np.int64)
        words = np.asarray(shard.word_ids[start:end], dtype=np.int64)
        entities = np.asarray(shard.entity_ids[start:end], dtype=np.int64)
        # phrase units stored at preprocessing (data.phrases), as one more id array
        phrases = (
            None
            if shard.phrase_ids is None
            else np.asarray(shard.phrase_ids[start:end], dtype=np.int64)
        )
        links = (
            None
            if shard.entity_links is None
            else np.asarray(shard.entity_links[start:end], dtype=np.int64)
        )
        sentence = np.searchsorted(shard.sentences, np.arange(start, end), side="right") - 1
        special = np.zeros(len(tokens), dtype=bool)
        if insert_separators:
            doc_starts = self._doc_token_starts[shard_i]
            inner = doc_starts[(doc_starts > start) & (doc_starts < end)] - start
            if len(inner):
                tokens = np.insert(tokens, inner, self.sep_id)
                words = np.insert(words, inner, -1)
                entities = np.insert(entities, inner, -1)
                sentence = np.insert(sentence, inner, -1)
                special = np.insert(special, inner, True)
                if phrases is not None:
                    phrases = np.insert(phrases, inner, -1)
                if links is not None:
                    links = np.insert(links, inner, -1)
        return tokens, words, entities, sentence, special, phrases, links

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        row = self.table[index]
        pieces = [(np.array([self.cls_id]), [-1], [-1], [-1], [True], 0)]
        if self.kind in inst.PAIR_LABEL_KEYS:
            segments = [
                (row[inst.A_SHARD], row[inst.A_START], row[inst.A_END], 0),
                (row[inst.B_SHARD], row[inst.B_START], row[inst.B_END], 1),
            ]
        else:
            segments = [(row[inst.P_SHARD], row[inst.P_START], row[inst.P_END], 0)]
        cross = self.kind == "full_sentences"
        phrase_pieces: list = [[-1]]  # [CLS]; the rest when the shards hold phrases
        link_pieces: list = [[-1]]  # [CLS]; the rest when the shards hold entity links
        for shard_i, start, end, segment in segments:
            tokens, words, entities, sentence, special, phrases, links = self._segment(
                int(shard_i), int(start), int(end), cross
            )
            if links is not None:  # the segment, then its [SEP]
                link_pieces += [links, [-1]]
            # offset by segment so ids from the two segments never collide
            shift = segment * (1 << 40)
            entities = entities + (entities >= 0) * shift
            sentence = sentence + (sentence >= 0) * shift
            if phrases is not None:  # the segment, then its [SEP]
                phrase_pieces += [phrases + (phrases >= 0) * shift, [-1]]
            pieces.append((tokens, words, entities, sentence, special, segment))
            pieces.append((np.array([self.sep_id]), [-1], [-1], [-1], [True], segment))
        input_ids = np.concatenate([p[0] for p in pieces])
        special = np.concatenate([np.asarray(p[4], dtype=bool) for p in pieces])
        item = {
            "index": np.int64(index),
            "input_ids": input_ids,
            "token_type_ids": np.concatenate([np.full(len(p[0]), p[5]) for p in pieces]),
            "special_tokens_mask": special.astype(np.int64),
            "word_ids": local_word_ids(np.concatenate([np.asarray(p[1]) for p in pieces]), special),
            "entity_ids": _renumber(np.concatenate([np.asarray(p[2]) for p in pieces])),
            "sentence_ids": _renumber(np.concatenate([np.asarray(p[3]) for p in pieces])),
        }
        if len(phrase_pieces) > 1:
            item["phrase_ids"] = _renumber(np.concatenate([np.asarray(p) for p in phrase_pieces]))
        if len(link_pieces) > 1:
            links = np.concatenate([np.asarray(p) for p in link_pieces])
            item["entity_links"] = first_token_links(links, item["entity_ids"])
        if self.kind in inst.PAIR_LABEL_KEYS:
            item[inst.PAIR_LABEL_KEYS[self.kind]] = np.int64(row[inst.LABEL])
        return item


def first_token_links(links: np.ndarray, entity_ids: np.ndarray) -> np.ndarray:
    """The entity of each mention on its first token only, -1 elsewhere (ERNIE-THU aligns an
    entity to the first token of its mention, SPECS §19). ``entity_ids``: the mention units."""
    first = entity_ids >= 0
    first[1:] &= entity_ids[1:] != entity_ids[:-1]
    return np.where(first, links, -1)


def _renumber(ids: np.ndarray) -> np.ndarray:
    """Unit ids -> 0..n-1 in order of first appearance, -1 kept."""
    out = np.full(len(ids), -1, dtype=np.int64)
    valid = ids >= 0
    if valid.any():
        _, first, inverse = np.unique(ids[valid], return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first))
        out[valid] = rank[inverse]
    return out
