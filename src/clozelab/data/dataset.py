"""Assemble instances (token ranges of the shards) into model inputs."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from clozelab.core.batch import IGNORE_INDEX
from clozelab.data import instances as inst
from clozelab.data import structure
from clozelab.data.shards import Shard
from clozelab.data.token_features import TOKEN_FEATURES, DocumentCounts, case_labels

#: Per-token arrays of a segment and the value they take on an inserted special token.
_SPECIAL_VALUES = {"word_ids": -1, "entity_ids": -1, "sentence_ids": -1, "phrase_ids": -1,
                   "entity_links": -1, "case_labels": IGNORE_INDEX,
                   "token_document_labels": IGNORE_INDEX}  # fmt: skip


def local_word_ids(raw: np.ndarray, special: np.ndarray) -> np.ndarray:
    """Shard-global word indices -> 0..n-1 within the sequence, -1 on special tokens."""
    change = np.ones(len(raw), dtype=bool)
    change[1:] = (raw[1:] != raw[:-1]) | special[:-1]
    change &= ~special
    ids = np.cumsum(change) - 1
    ids[special] = -1
    return ids


class InstanceDataset(Dataset):
    """Item ``i`` of an instance table as numpy arrays (no padding, no corruption).

    ``features``: the per-token labels of ``token_features`` to add (those the run's objectives
    read); ``case_labels`` needs shards written with ``data.case_flags=true``.
    """

    def __init__(
        self,
        shards: list[Shard],
        table: np.ndarray,
        kind: str,
        cls_id: int,
        sep_id: int,
        features: tuple[str, ...] = (),
    ):
        if kind not in inst.KINDS:
            raise ValueError(f"unknown instance kind {kind!r}")
        unknown = set(features) - set(TOKEN_FEATURES)
        if unknown:
            raise ValueError(f"unknown token features {sorted(unknown)}; known: {TOKEN_FEATURES}")
        if "case_labels" in features and any(s.case_flags is None for s in shards):
            raise ValueError("case_labels need shards written with data.case_flags=true")
        self.shards, self.table, self.kind = shards, table, kind
        self.cls_id, self.sep_id, self.features = cls_id, sep_id, tuple(features)
        self._doc_token_starts = [
            np.asarray(s.sentences)[np.asarray(s.documents[:-1])] for s in shards
        ]
        self._counts = DocumentCounts(shards) if "token_document_labels" in features else None

    def __len__(self) -> int:
        return len(self.table)

    def _segment(self, shard_i: int, start: int, end: int, insert_separators: bool) -> dict:
        """The per-token arrays of tokens [start, end) of a shard (``tokens``, ``special`` and the
        ``_SPECIAL_VALUES`` keys the shards and features give)."""
        shard = self.shards[shard_i]
        out = {
            "tokens": np.asarray(shard.tokens[start:end], dtype=np.int64),
            "word_ids": np.asarray(shard.word_ids[start:end], dtype=np.int64),
            "entity_ids": np.asarray(shard.entity_ids[start:end], dtype=np.int64),
            "sentence_ids": np.searchsorted(shard.sentences, np.arange(start, end), "right") - 1,
        }
        if shard.phrase_ids is not None:  # phrase units stored at preprocessing (data.phrases)
            out["phrase_ids"] = np.asarray(shard.phrase_ids[start:end], dtype=np.int64)
        if shard.entity_links is not None:  # the entity each mention names (ERNIE-THU)
            out["entity_links"] = np.asarray(shard.entity_links[start:end], dtype=np.int64)
        if "case_labels" in self.features:
            out["case_labels"] = case_labels(
                out["word_ids"], np.asarray(shard.case_flags[start:end])
            )
        if self._counts is not None:
            out["token_document_labels"] = self._counts.labels(shard_i, start, end)
        out["special"] = np.zeros(end - start, dtype=bool)
        if insert_separators:
            doc_starts = self._doc_token_starts[shard_i]
            inner = doc_starts[(doc_starts > start) & (doc_starts < end)] - start
            if len(inner):
                values = {"tokens": self.sep_id, "special": True, **_SPECIAL_VALUES}
                out = {key: np.insert(array, inner, values[key]) for key, array in out.items()}
        return out

    def _segments(self, row: np.ndarray) -> list[tuple[int, int, int, int]]:
        """(shard, start, end, token type) of the row's segments, in input order."""
        if self.kind == "structure" and row[inst.KIND] == structure.REORDERED:
            bounds = [int(row[inst.A_START])]
            bounds += [int(c) for c in row[structure.CUTS :] if c >= 0]
            bounds.append(int(row[inst.A_END]))
            pieces = [
                (row[inst.A_SHARD], bounds[j], bounds[j + 1], 0) for j in range(len(bounds) - 1)
            ]
            return [pieces[j] for j in structure.permutation_of(int(row[inst.LABEL]))]
        if self.kind in inst.TWO_SEGMENT_KINDS:
            return [
                (row[inst.A_SHARD], row[inst.A_START], row[inst.A_END], 0),
                (row[inst.B_SHARD], row[inst.B_START], row[inst.B_END], 1),
            ]
        return [(row[inst.P_SHARD], row[inst.P_START], row[inst.P_END], 0)]

    def _labels(self, row: np.ndarray) -> dict[str, np.int64]:
        if self.kind in inst.PAIR_LABEL_KEYS:
            return {inst.PAIR_LABEL_KEYS[self.kind]: np.int64(row[inst.LABEL])}
        if self.kind == "structure":
            reordered = row[inst.KIND] == structure.REORDERED
            label, none = np.int64(row[inst.LABEL]), np.int64(IGNORE_INDEX)
            return {
                "sentence_distance_label": none if reordered else label,
                "permutation_label": label if reordered else none,
            }
        return {}

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        row = self.table[index]
        segments = self._segments(row)
        if self.kind == "structure" and row[inst.KIND] == structure.REORDERED:
            separators = [False] * (len(segments) - 1) + [True]  # one paragraph, one [SEP]
        else:
            separators = [True] * len(segments)
        cross = self.kind == "full_sentences"
        parts = [self._segment(int(s), int(a), int(b), cross) for s, a, b, _ in segments]
        keys = [k for k in _SPECIAL_VALUES if k in parts[0]]
        pieces: dict[str, list] = {k: [[v]] for k, v in _SPECIAL_VALUES.items() if k in keys}
        tokens, special, types = [[self.cls_id]], [[True]], [[0]]
        for (_, _, _, segment), part, sep in zip(segments, parts, separators):
            shift = segment * (1 << 40)  # ids of the two segments never collide
            for key in ("entity_ids", "sentence_ids", "phrase_ids"):
                if key in part:
                    part[key] = part[key] + (part[key] >= 0) * shift
            tokens.append(part["tokens"])
            special.append(part["special"])
            types.append(np.full(len(part["tokens"]), segment))
            for key in keys:
                pieces[key].append(part[key])
            if sep:
                tokens.append([self.sep_id])
                special.append([True])
                types.append([segment])
                for key in keys:
                    pieces[key].append([_SPECIAL_VALUES[key]])
        special_mask = np.concatenate([np.asarray(p, dtype=bool) for p in special])
        joined = {
            key: np.concatenate([np.asarray(p, dtype=np.int64) for p in pieces[key]])
            for key in keys
        }
        item = {
            "index": np.int64(index),
            "input_ids": np.concatenate([np.asarray(p, dtype=np.int64) for p in tokens]),
            "token_type_ids": np.concatenate([np.asarray(p, dtype=np.int64) for p in types]),
            "special_tokens_mask": special_mask.astype(np.int64),
            "word_ids": local_word_ids(joined["word_ids"], special_mask),
            "entity_ids": _renumber(joined["entity_ids"]),
            "sentence_ids": _renumber(joined["sentence_ids"]),
        }
        if "phrase_ids" in joined:
            item["phrase_ids"] = _renumber(joined["phrase_ids"])
        if "entity_links" in joined:
            item["entity_links"] = first_token_links(joined["entity_links"], item["entity_ids"])
        for key in self.features:
            item[key] = joined[key]
        item.update(self._labels(row))
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
