"""Reference implementations the seq2seq corruptions are timed against in ``clozelab bench``.

Each is a faithful port of the code the field uses, row by row as the original runs:

* ``hf_t5_span``: HF's ``FlaxDataCollatorForT5MLM`` (transformers ``examples/flax/language-modeling/
  run_t5_mlm_flax.py``): a NumPy ``random_spans_noise_mask`` per row, ``create_sentinel_ids`` and
  ``filter_input_ids`` over the batch. It needs rows of one length (its packed chunks).
* ``fairseq_bart``: fairseq's ``DenoisingDataset`` noising of one item at a time
  (``permute_sentences``, ``add_whole_word_mask`` with span-poisson lengths, insertion of the
  zero-length spans; the BART paper run), in torch as fairseq does.
* ``fairseq_insert``: fairseq's ``add_insertion_noise``, one item at a time.

Timing only: their outputs are not used (the corruptions' own tests check the algorithms).
"""

from __future__ import annotations

import math

import numpy as np
import torch


class HFT5SpanCollator:
    """``FlaxDataCollatorForT5MLM.__call__`` on ``input_ids`` rows of one length."""

    def __init__(self, vocab_size: int, eos_id: int, pad_id: int, density=0.15, mean_span=3.0):
        self.vocab, self.eos, self.pad = vocab_size + 100, eos_id, pad_id
        self.density, self.mean_span = density, mean_span

    def random_spans_noise_mask(self, length: int) -> np.ndarray:
        orig_length = length
        num_noise_tokens = int(np.round(length * self.density))
        num_nonnoise_tokens = length - num_noise_tokens
        num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
        num_noise_spans = int(np.round(min(num_noise_tokens, num_nonnoise_tokens) / self.mean_span))
        num_noise_spans = max(num_noise_spans, 1)
        num_nonnoise_tokens = length - num_noise_tokens

        def _random_segmentation(num_items, num_segments):
            mask_indices = np.arange(num_items - 1) < (num_segments - 1)
            np.random.shuffle(mask_indices)
            first_in_segment = np.pad(mask_indices, [[1, 0]])
            segment_id = np.cumsum(first_in_segment)
            _, segment_length = np.unique(segment_id, return_counts=True)
            return segment_length

        noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans)
        nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans)
        interleaved = np.reshape(
            np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1), [num_noise_spans * 2]
        )
        span_starts = np.cumsum(interleaved)[:-1]
        span_start_indicator = np.zeros((length,), dtype=np.int8)
        span_start_indicator[span_starts] = True
        span_num = np.cumsum(span_start_indicator)
        is_noise = np.equal(span_num % 2, 1)
        return is_noise[:orig_length]

    def create_sentinel_ids(self, mask_indices: np.ndarray) -> np.ndarray:
        start_indices = mask_indices - np.roll(mask_indices, 1, axis=-1) * mask_indices
        start_indices[:, 0] = mask_indices[:, 0]
        sentinel_ids = np.where(
            start_indices != 0, np.cumsum(start_indices, axis=-1), start_indices
        )
        sentinel_ids = np.where(sentinel_ids != 0, (self.vocab - sentinel_ids), 0)
        sentinel_ids -= mask_indices - start_indices
        return sentinel_ids

    def filter_input_ids(self, input_ids: np.ndarray, sentinel_ids: np.ndarray) -> np.ndarray:
        batch_size = input_ids.shape[0]
        input_ids_full = np.where(sentinel_ids != 0, sentinel_ids, input_ids)
        input_ids = input_ids_full[input_ids_full >= 0].reshape((batch_size, -1))
        return np.concatenate(
            [input_ids, np.full((batch_size, 1), self.eos, dtype=np.int32)], axis=-1
        )

    def __call__(self, input_ids: np.ndarray) -> dict:
        batch_size, length = input_ids.shape
        mask_indices = np.asarray([self.random_spans_noise_mask(length) for _ in range(batch_size)])
        labels_mask = ~mask_indices
        input_ids_sentinel = self.create_sentinel_ids(mask_indices.astype(np.int8))
        labels_sentinel = self.create_sentinel_ids(labels_mask.astype(np.int8))
        labels = self.filter_input_ids(input_ids, labels_sentinel)
        decoder_input_ids = np.zeros_like(labels)
        decoder_input_ids[:, 1:] = labels[:, :-1]
        decoder_input_ids[:, 0] = self.pad
        return {
            "input_ids": self.filter_input_ids(input_ids, input_ids_sentinel),
            "labels": labels,
            "decoder_input_ids": decoder_input_ids,
        }


def _poisson_distribution(lam: float) -> torch.distributions.Categorical:
    ps, power, factorial = [], 1.0, 1.0
    for k in range(128):
        ps.append(math.exp(-lam) * power / factorial)
        power *= lam
        factorial *= k + 1
        if ps[-1] < 0.0000001:
            break
    return torch.distributions.Categorical(torch.FloatTensor(ps))


class FairseqDenoising:
    """fairseq ``DenoisingDataset`` noising, one item (``[CLS] ... [SEP]`` tokens) at a time."""

    def __init__(
        self,
        vocab_size,
        mask_id,
        eos_id,
        mask=0.3,
        random_ratio=0.1,
        lam=3.0,
        permute_sentences=1.0,
        insert=0.0,
    ):
        self.vocab_size, self.mask_idx, self.eos = vocab_size, mask_id, eos_id
        self.mask_ratio, self.random_ratio, self.insert_ratio = mask, random_ratio, insert
        self.permute_sentence_ratio = permute_sentences
        self.mask_span_distribution = _poisson_distribution(lam)

    def permute_sentences(self, source, sentence_ends, p=1.0):
        full_stops = torch.zeros_like(source, dtype=torch.bool)
        full_stops[sentence_ends] = True
        full_stops[-2] = 1
        sentence_ends = (full_stops[1:] * ~full_stops[:-1]).nonzero(as_tuple=False) + 2
        result = source.clone()
        num_sentences = sentence_ends.size(0)
        num_to_permute = math.ceil((num_sentences * 2 * p) / 2.0)
        substitutions = torch.randperm(num_sentences)[:num_to_permute]
        ordering = torch.arange(0, num_sentences)
        ordering[substitutions] = substitutions[torch.randperm(num_to_permute)]
        index = 1
        for i in ordering:
            sentence = source[(sentence_ends[i - 1] if i > 0 else 1) : sentence_ends[i]]
            result[index : index + sentence.size(0)] = sentence
            index += sentence.size(0)
        return result

    def add_whole_word_mask(self, source, is_word_start, p):
        num_to_mask = math.ceil(is_word_start.float().sum() * p)
        num_inserts = 0
        if num_to_mask == 0:
            return source
        lengths = self.mask_span_distribution.sample(sample_shape=(num_to_mask,))
        cum_length = torch.cumsum(lengths, 0)
        while cum_length[-1] < num_to_mask:
            lengths = torch.cat(
                [lengths, self.mask_span_distribution.sample(sample_shape=(num_to_mask,))], dim=0
            )
            cum_length = torch.cumsum(lengths, 0)
        i = 0
        while cum_length[i] < num_to_mask:
            i += 1
        lengths[i] = num_to_mask - (0 if i == 0 else cum_length[i - 1])
        num_to_mask = i + 1
        lengths = lengths[:num_to_mask]
        lengths = lengths[lengths > 0]
        num_inserts = num_to_mask - lengths.size(0)
        num_to_mask -= num_inserts
        if num_to_mask == 0:
            return self.add_insertion_noise(source, num_inserts / source.size(0))
        word_starts = is_word_start.nonzero(as_tuple=False)
        indices = word_starts[torch.randperm(word_starts.size(0))[:num_to_mask]].squeeze(1)
        mask_random = torch.FloatTensor(num_to_mask).uniform_() < self.random_ratio
        source_length = source.size(0)
        to_keep = torch.ones(source_length, dtype=torch.bool)
        is_word_start = is_word_start.clone().long()
        is_word_start[-1] = 255
        source[indices] = self.mask_idx
        source[indices[mask_random]] = torch.randint(
            1, self.vocab_size, size=(int(mask_random.sum()),)
        )
        lengths -= 1
        while indices.size(0) > 0:
            lengths -= is_word_start[indices + 1].long()
            uncompleted = lengths >= 0
            indices = indices[uncompleted] + 1
            mask_random = mask_random[uncompleted]
            lengths = lengths[uncompleted]
            to_keep[indices] = 0
        source = source[to_keep]
        if num_inserts > 0:
            source = self.add_insertion_noise(source, num_inserts / source.size(0))
        return source

    def add_insertion_noise(self, tokens, p):
        if p == 0.0:
            return tokens
        num_tokens = len(tokens)
        n = math.ceil(num_tokens * p)
        noise_indices = torch.randperm(num_tokens + n - 2)[:n] + 1
        noise_mask = torch.zeros(size=(num_tokens + n,), dtype=torch.bool)
        noise_mask[noise_indices] = 1
        result = torch.LongTensor(n + len(tokens)).fill_(-1)
        num_random = math.ceil(n * self.random_ratio)
        result[noise_indices[num_random:]] = self.mask_idx
        result[noise_indices[:num_random]] = torch.randint(1, self.vocab_size, size=(num_random,))
        result[~noise_mask] = tokens
        return result

    def __call__(self, item: dict) -> dict:
        source = item["input_ids"].clone()
        if self.permute_sentence_ratio > 0:
            source = self.permute_sentences(source, item["sentence_ends"])
        if self.mask_ratio > 0:
            source = self.add_whole_word_mask(source, item["is_word_start"], self.mask_ratio)
        if self.insert_ratio > 0:
            source = self.add_insertion_noise(source, self.insert_ratio)
        return {"source": source, "target": item["input_ids"]}


def fairseq_items(clean: dict) -> list[dict]:
    """One fairseq-style item per row: its tokens, word starts (not the first and last token) and
    sentence ends."""
    items = []
    for row in range(clean["input_ids"].shape[0]):
        n = int(clean["attention_mask"][row].sum())
        ids = clean["input_ids"][row, :n]
        words = clean["word_ids"][row, :n]
        start = torch.ones(n, dtype=torch.bool)
        start[1:] = words[1:] != words[:-1]
        start[0] = start[-1] = False
        start &= words >= 0
        sentences = clean["sentence_ids"][row, :n]
        ends = ((sentences[1:] != sentences[:-1]) & (sentences[:-1] >= 0)).nonzero().squeeze(1)
        items.append({"input_ids": ids, "is_word_start": start, "sentence_ends": ends})
    return items


def references(clean: dict, tokenizer) -> dict:
    """``{name: (callable, batch size)}``: each reference's timed call on the bench batch."""
    rows = clean["input_ids"][:, 1:-1].numpy()  # the bodies: HF's T5 chunks have no specials
    t5 = HFT5SpanCollator(tokenizer.vocab_size, tokenizer.sep_id, tokenizer.pad_id)
    items = fairseq_items(clean)
    bart = FairseqDenoising(tokenizer.vocab_size, tokenizer.mask_id, tokenizer.sep_id)
    insert = FairseqDenoising(
        tokenizer.vocab_size,
        tokenizer.mask_id,
        tokenizer.sep_id,
        mask=0.0,
        permute_sentences=0.0,
        insert=0.15,
    )
    return {
        "hf_t5_span": lambda: t5(rows),
        "fairseq_bart": lambda: [bart(item) for item in items],
        "fairseq_insert": lambda: [insert(item) for item in items],
    }
