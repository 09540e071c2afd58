"""Examples to model inputs: ``[CLS] A [SEP] (B [SEP])`` sequences, first-subword word labels
for token labelling, word boundaries and gold spans for span NER, and doc-stride windows over
SQuAD passages; ``pad_batch`` collates them.

Every feature is a dict of plain lists; tensors are made per batch with dynamic padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from clozelab.core.errors import config_error
from clozelab.data.tokenizer import Tokenizer
from clozelab.tasks.examples import QAExample, SpanExample, TextExample, TokenExample


def _truncate_pair(a: list[int], b: list[int] | None, budget: int) -> None:
    """Drop tokens from the end of the longer segment until both fit in ``budget``."""
    while len(a) + (len(b) if b else 0) > budget:
        if b and len(b) > len(a):
            b.pop()
        else:
            a.pop()


def encode_text(
    tokenizer: Tokenizer, examples: Sequence[TextExample], max_len: int, labels=None
) -> list[dict]:
    """``input_ids``/``token_type_ids`` (+ ``label``: a class index via ``labels``, or a float)."""
    first = [e.ids for e in tokenizer.encode_batch([x.text or "" for x in examples])]
    pairs = [x.text_pair for x in examples]
    has_pair = any(p is not None for p in pairs)
    second = [e.ids for e in tokenizer.encode_batch([p or "" for p in pairs])] if has_pair else None
    index = {name: i for i, name in enumerate(labels)} if labels else None
    features = []
    for i, example in enumerate(examples):
        a = list(first[i])
        b = list(second[i]) if second is not None else None
        _truncate_pair(a, b, max_len - (3 if b is not None else 2))
        ids = [tokenizer.cls_id, *a, tokenizer.sep_id]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b, tokenizer.sep_id]
            types += [1] * (len(b) + 1)
        feature = {"input_ids": ids, "token_type_ids": types}
        if example.label is not None:
            feature["labels"] = _label(example.label, index, labels)
        features.append(feature)
    return features


def _label(label, index: dict | None, labels) -> int | float:
    """A class index (classification) or a number (regression); an unknown class or a non-number
    is a clear error naming the label and the fix."""
    if index is not None:
        if str(label) not in index:
            raise config_error(
                "task.label",
                str(label),
                f"not one of the task's classes {list(labels)}",
                "list every class in task.labels, or fix the label in the task file",
            )
        return index[str(label)]
    try:
        return float(label)
    except (TypeError, ValueError):
        raise config_error(
            "task.label",
            str(label),
            "not a number, but the task is a regression",
            "use a classification task (task._target_=clozelab.tasks.classification."
            "ClassificationTask), or fix the label in the task file",
        ) from None


def _word_tokens(tokenizer: Tokenizer, sentences: Sequence[list[str]], max_len: int):
    """Per sentence: ``[CLS] subwords [SEP]`` ids cut to ``max_len``, and the token positions of
    the first / last subword of each word that fits. A word the tokenizer turned into no tokens
    takes the previous word's positions; words cut by ``max_len`` are left out."""
    encodings = tokenizer.hf.encode_batch(
        list(sentences), is_pretokenized=True, add_special_tokens=False
    )
    for words, enc in zip(sentences, encodings, strict=True):
        kept = enc.ids[: max_len - 2]
        first_token: dict[int, int] = {}
        last_token: dict[int, int] = {}
        for position, word in enumerate(enc.word_ids[: len(kept)]):
            if word is not None:
                first_token.setdefault(word, position + 1)  # +1 for [CLS]
                last_token[word] = position + 1
        starts: list[int] = []
        ends: list[int] = []
        first = last = 1
        truncated = len(kept) < len(enc.ids)
        for w in range(len(words)):
            if w in first_token:
                first, last = first_token[w], last_token[w]
            elif truncated and w > max(first_token, default=-1):
                break
            starts.append(first)
            ends.append(last)
        yield [tokenizer.cls_id, *kept, tokenizer.sep_id], starts, ends


def _entity_links(linker, words: list[str], n_tokens: int, starts: list[int]) -> list[int]:
    """The entity of each mention ``linker`` finds in ``words`` on the first token of its first
    word (ERNIE-THU's alignment), -1 elsewhere; mentions of cut words are left out."""
    links = [-1] * n_tokens
    for word, entity in linker.link_words(words):
        if word < len(starts):
            links[starts[word]] = entity
    return links


def encode_tokens(
    tokenizer: Tokenizer,
    examples: Sequence[TokenExample],
    max_len: int,
    tag_index: dict,
    linker=None,
) -> list[dict]:
    """Word-level labels with the word boundaries (``word_starts`` / ``word_ends``: token
    positions of the first / last subword of the words that fit) and ``token_words`` (the word
    of each token, -1 on [CLS]/[SEP]), so the model can label the first subword or every subword
    and decode from the first subword or from all of them. Words past ``max_len`` are cut and
    counted as predicted "O" at scoring time. With a ``linker`` (``EntityLinker``), also
    ``entity_links``: the entity of each mention on its first token, -1 elsewhere."""
    features = []
    aligned = _word_tokens(tokenizer, [e.words for e in examples], max_len)
    for example, (ids, starts, ends) in zip(examples, aligned, strict=True):
        token_words = [-1] * len(ids)
        for w, (first, last) in enumerate(zip(starts, ends)):
            for position in range(first, last + 1):
                if token_words[position] < 0:  # a word with no tokens of its own takes none
                    token_words[position] = w
        features.append(
            {
                "input_ids": ids,
                "token_type_ids": [0] * len(ids),
                "word_starts": starts,
                "word_ends": ends,
                "token_words": token_words,
                "word_labels": [tag_index.get(t, 0) for t in example.tags[: len(starts)]],
                "n_words": len(example.words),
            }
        )
        if linker is not None:
            features[-1]["entity_links"] = _entity_links(linker, example.words, len(ids), starts)
    return features


def encode_spans(
    tokenizer: Tokenizer,
    examples: Sequence[SpanExample],
    max_len: int,
    type_index: dict,
    max_span_length: int,
    linker=None,
) -> list[dict]:
    """Word boundaries for span classification: ``word_starts`` / ``word_ends`` (first / last
    subword of each word that fits) and ``span_gold`` rows ``(first word, last word, label)`` of
    the gold entities the model can represent (inside the kept words, at most
    ``max_span_length`` words); the others still count as missed at scoring time."""
    features = []
    aligned = _word_tokens(tokenizer, [e.words for e in examples], max_len)
    for example, (ids, starts, ends) in zip(examples, aligned, strict=True):
        gold = [
            (s, e - 1, type_index[kind])
            for s, e, kind in example.spans
            if e <= len(starts) and e - s <= max_span_length
        ]
        features.append(
            {
                "input_ids": ids,
                "token_type_ids": [0] * len(ids),
                "word_starts": starts,
                "word_ends": ends,
                "span_gold": gold,
                "n_words": len(example.words),
            }
        )
        if linker is not None:
            features[-1]["entity_links"] = _entity_links(linker, example.words, len(ids), starts)
    return features


def encode_qa(
    tokenizer: Tokenizer,
    examples: Sequence[QAExample],
    max_len: int = 384,
    doc_stride: int = 128,
    max_query_len: int = 64,
) -> list[dict]:
    """Windows ``[CLS] question [SEP] passage-piece [SEP]`` over each passage.

    Consecutive windows start ``doc_stride`` passage tokens apart. Each feature keeps the
    passage tokens' character offsets (``offsets``, None outside the passage) so decoding maps a
    span back to text and can never leave the passage; training targets are the token positions
    of the first answer, or 0 ([CLS]) when the window does not contain it.
    """
    questions = tokenizer.encode_batch([e.question for e in examples])
    contexts = tokenizer.encode_batch([e.context for e in examples])
    features = []
    for ex_index, (example, q, c) in enumerate(zip(examples, questions, contexts, strict=True)):
        q_ids = q.ids[:max_query_len]
        room = max_len - len(q_ids) - 3
        c_ids, c_offsets = c.ids, c.offsets
        answer = None
        if example.answers:
            char_start = example.answer_starts[0]
            char_end = char_start + len(example.answers[0])
            tok_start = next(
                (i for i, (s, e) in enumerate(c_offsets) if e > char_start), len(c_ids)
            )
            tok_end = tok_start
            for i in range(tok_start, len(c_ids)):
                if c_offsets[i][0] >= char_end:
                    break
                tok_end = i
            answer = (tok_start, tok_end)
        start = 0
        while True:
            length = min(room, len(c_ids) - start)
            prefix = [tokenizer.cls_id, *q_ids, tokenizer.sep_id]
            ids = prefix + list(c_ids[start : start + length]) + [tokenizer.sep_id]
            offsets: list = [None] * len(prefix)
            offsets += [tuple(o) for o in c_offsets[start : start + length]] + [None]
            feature = {
                "input_ids": ids,
                "token_type_ids": [0] * len(prefix) + [1] * (length + 1),
                "offsets": offsets,
                "example_index": ex_index,
            }
            if answer is not None:
                s, e = answer
                if start <= s and e < start + length:
                    feature["start_positions"] = s - start + len(prefix)
                    feature["end_positions"] = e - start + len(prefix)
                else:
                    feature["start_positions"] = feature["end_positions"] = 0
            features.append(feature)
            if start + length >= len(c_ids):
                break
            start += min(doc_stride, length)
    return features


def context_mask(offsets: list) -> list[bool]:
    """True on passage tokens (the only positions a QA span may start or end on)."""
    return [o is not None for o in offsets]


def _pad_rows(rows: Sequence[list], fill: int, tail: tuple[int, ...] = ()) -> Tensor:
    """Lists of ints (or of ``tail``-shaped tuples) as one [B, max(1, longest), *tail] tensor."""
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width, *tail), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def pad_targets(features: Sequence[dict], pad_id: int) -> dict[str, Tensor]:
    """Text-to-text targets: ``labels`` (-100 after each row's end) and ``decoder_input_ids``
    (pad there), from the features' ``target_ids`` / ``decoder_input_ids`` lists."""
    labels = _pad_rows([f["target_ids"] for f in features], -100)
    return {
        "labels": labels,
        "decoder_input_ids": _pad_rows([f["decoder_input_ids"] for f in features], pad_id),
    }


def pad_batch(features: Sequence[dict], pad_id: int) -> dict[str, Tensor]:
    """Pad ``input_ids``/``token_type_ids`` to the longest feature; build ``attention_mask``;
    stack the label keys (word-level lists padded with -100 / 0, ``word_mask`` marking words,
    ``span_gold`` rows padded with -1)."""
    width = max(len(f["input_ids"]) for f in features)
    batch: dict[str, Tensor] = {}
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(features), width), dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        types[i, :n] = torch.tensor(f["token_type_ids"])
        mask[i, :n] = 1
    batch.update(input_ids=ids, token_type_ids=types, attention_mask=mask)
    first = features[0]
    if "labels" in first:
        dtype = torch.float if isinstance(first["labels"], float) else torch.long
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
    if "word_starts" in first:
        for key, fill in (("word_starts", 0), ("word_ends", 0), ("word_labels", -100)):
            if key in first:
                batch[key] = _pad_rows([f[key] for f in features], fill)
        if "token_words" in first:
            batch["token_words"] = _pad_rows([f["token_words"] for f in features], -1)
        words = batch["word_starts"].shape[1]
        batch["word_mask"] = torch.tensor(
            [[j < len(f["word_starts"]) for j in range(words)] for f in features]
        )
    if "entity_links" in first:  # entities aligned to the tokens (ERNIE-THU)
        batch["entity_links"] = _pad_rows([f["entity_links"] for f in features], -1)
    if "target_ids" in first:  # text-to-text (kind: generation): labels + decoder inputs
        batch.update(pad_targets(features, pad_id))
    if "span_gold" in first:
        batch["span_gold"] = _pad_rows([f["span_gold"] for f in features], -1, (3,))
    if "offsets" in first:
        cmask = torch.zeros((len(features), width), dtype=torch.bool)
        for i, f in enumerate(features):
            cmask[i, : len(f["offsets"])] = torch.tensor(context_mask(f["offsets"]))
        batch["context_mask"] = cmask
        if "start_positions" in first:
            batch["start_positions"] = torch.tensor([f["start_positions"] for f in features])
            batch["end_positions"] = torch.tensor([f["end_positions"] for f in features])
    return batch
