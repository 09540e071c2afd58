"""T5 denoising objectives (SPECS §14): exact span counts, sentinels, round trips, lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.corruption.t5 import (
    T5Noise,
    random_spans_lengths,
    random_spans_noise_mask,
    span_counts,
)

from .s2s_helpers import (
    CLS,
    PAD,
    SEP,
    TOK,
    VOCAB,
    fill_sentinels,
    gen,
    originals,
    packed_batch,
    sources,
    targets,
)


def spans_mask(lengths, width, seed):
    keys = torch.rand(2, len(lengths), max(width, 2), generator=gen(seed)).numpy()
    return torch.from_numpy(random_spans_noise_mask(np.asarray(lengths), width, keys))


def test_random_spans_helper_lengths():
    assert random_spans_lengths(512) == (568, 114)
    assert random_spans_lengths(1024) == (1137, 229)
    assert random_spans_lengths(128) == (141, 29)


@pytest.mark.parametrize("length", [2, 3, 7, 20, 141, 568])
def test_noise_mask_counts_exact_and_alternation(length):
    noise = spans_mask([length] * 200, length + 5, length)
    num_noise, num_spans = (int(x[0]) for x in span_counts(np.array([length]), 0.15, 3.0))
    assert (noise.sum(-1) == num_noise).all()
    assert not noise[:, length:].any()
    starts = noise & ~torch.roll(noise, 1, 1)
    starts[:, 0] = noise[:, 0]
    assert (starts.sum(-1) == num_spans).all()  # non-empty segments: spans never touch
    assert not noise[:, 0].any()  # starts with non-noise
    assert noise[:, length - 1].all()  # ends with noise
    if length == 568:
        assert (num_noise, num_spans) == (85, 28)


def test_noise_mask_is_uniform_over_segmentations():
    # L = 20: 3 noise tokens in 1 span; 17 clean: the span starts uniformly at 1..17 after clean
    # segment 0, so the noise span's position is uniform over the 17 slots (ends with noise: 17).
    noise = spans_mask([20] * 20000, 20, 1)
    assert (noise.sum(-1) == 3).all()
    first = noise.float().argmax(-1)
    assert (first == 17).all()  # one span, ending with noise: fixed layout
    noise = spans_mask([40] * 20000, 40, 2)
    # L = 40: 6 noise in 2 spans; span 0's length is uniform on 1..5
    starts = noise & ~torch.roll(noise, 1, 1)
    second = noise.long().cumsum(-1) * (~noise).long()
    first_len = torch.where(second.amax(-1) > 0, second.amax(-1), 0)
    counts = torch.bincount(first_len, minlength=6)[1:6].float()
    assert (starts.sum(-1) == 2).all()
    assert torch.allclose(counts / counts.sum(), torch.full((5,), 0.2), atol=0.02)


def test_t5_span_round_trip_counts_and_sentinels():
    batch = packed_batch(b=64, t=143)
    c = T5Noise(**TOK)
    out = c(batch, gen(3))
    assert c.extra_vocab == 100
    body = batch["attention_mask"].sum(-1).numpy() - 2
    num_noise, num_spans = span_counts(body, 0.15, 3.0)
    for b, (src, tgt, orig) in enumerate(zip(sources(out), targets(out), originals(batch, False))):
        assert fill_sentinels(src, tgt) == orig  # source + target give back the original
        sentinels = [t for t in src if t >= VOCAB]
        assert sentinels == [VOCAB + 99 - i for i in range(int(num_spans[b]))]
        assert src[-2] == VOCAB + 99 - (len(sentinels) - 1) and src[-1] == SEP  # ends sentinel, eos
        assert tgt[0] == VOCAB + 99 and tgt[-1] == SEP and tgt[-2] < VOCAB  # no trailing sentinel
        assert len(tgt) == int(num_noise[b]) + int(num_spans[b]) + 1
        assert CLS not in src  # T5 has no BOS
    assert out["input_ids"].shape[1] == 128  # the full row fills 128 (raw 141 + [CLS] + [SEP])
    assert out["labels"].shape[1] == 29
    assert (out["decoder_input_ids"][:, 0] == PAD).all()  # T5 starts the decoder with pad
    real = out["labels"] != -100
    shifted = out["decoder_input_ids"][:, 1:][real[:, 1:]]
    assert torch.equal(shifted, out["labels"][:, :-1][real[:, 1:]])
    assert (out["decoder_input_ids"][~real] == PAD).all()
    assert torch.equal(out["decoder_attention_mask"].bool(), real)


def test_t5_span_is_deterministic_and_keeps_pair_separators():
    batch = packed_batch(b=16, t=96, pair=True, seed=4)
    c = T5Noise(**TOK)
    a, b = c(batch, gen(9)), c(batch, gen(9))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for src, tgt, orig in zip(sources(a), targets(a), originals(batch, False)):
        assert fill_sentinels(src, tgt) == orig
        assert src.count(SEP) == 2  # the middle [SEP] and eos are never noise


def test_iid_sentinels_are_numbered_by_noise_runs_even_when_a_row_starts_with_noise():
    batch = packed_batch(b=200, t=40, seed=5)
    c = T5Noise(noise="iid", density=0.3, **TOK)
    out = c(batch, gen(5))
    starts_with_noise = 0
    for src, tgt, orig in zip(sources(out), targets(out), originals(batch, False)):
        assert fill_sentinels(src, tgt) == orig
        starts_with_noise += src[0] >= VOCAB
        runs = [t for t in src if t >= VOCAB]
        assert runs == [t for t in tgt if t >= VOCAB]  # the same sentinel on both sides
    assert starts_with_noise > 0  # the pitfall case occurred and was handled


def test_iid_density_and_drop_modes():
    batch = packed_batch(b=256, t=128, ragged=False, seed=6)
    body = batch["attention_mask"].sum() - 2 * 256
    c = T5Noise(noise="iid", mode="drop", **TOK)
    g = gen(7)
    out = c(batch, g)
    assert c.extra_vocab == 0
    dropped = (out["labels"] != -100).sum() - 256  # minus the eos of each target
    assert abs(float(dropped) / float(body) - 0.15) < 0.01
    noise = c.noise_mask(batch, gen(7))  # the same draw: merge source and target back
    for b, (src, tgt) in enumerate(zip(sources(out), targets(out))):
        ids = batch["input_ids"][b, 1:].tolist()
        nz = noise[b, 1:].tolist()
        rebuilt, s, t = [], iter(src), iter(tgt)
        for tok, is_noise in zip(ids, nz):
            if tok == PAD:
                break
            rebuilt.append(next(t) if is_noise else next(s))
        assert rebuilt == ids[: len(rebuilt)] and len(rebuilt) == len(src) + len(tgt) - 1


def test_drop_spans_lengths():
    batch = packed_batch(b=8, t=143, ragged=False)
    c = T5Noise(mode="drop", **TOK)
    out = c(batch, gen(0))
    assert out["input_ids"].shape[1] == c.output_length(143, 2) == 143 - 1 - 21
    assert out["labels"].shape[1] == 22


def test_prefix_lm_splits_once():
    batch = packed_batch(b=300, t=64, seed=8)
    c = T5Noise(noise="prefix", mode="drop", density=0.5, **TOK)
    out = c(batch, gen(8))
    prefix_lengths = []
    for src, tgt, orig in zip(sources(out), targets(out), originals(batch, False)):
        assert src[:-1] + tgt == orig  # prefix, then the target continues it
        assert src[-1] == SEP and len(src) >= 2 and len(tgt) >= 2
        prefix_lengths.append((len(src) - 1) / (len(orig) - 1))
    mean = sum(prefix_lengths) / len(prefix_lengths)
    assert 0.4 < mean < 0.6  # uniform split point


def test_instance_length_search_matches_t5():
    c = T5Noise(**TOK)
    assert c.instance_length(512, 2) - 2 == 568  # raw chunk, without [CLS]/[SEP]
    assert c.instance_length(128, 2) - 2 == 141
    assert c.instance_length(128, 3) - 3 == 140  # a pair row keeps its middle [SEP]
    bart_like = T5Noise(bos=True, **TOK)
    assert bart_like.instance_length(128, 2) == 142


def test_bad_config_and_sentinel_overflow():
    with pytest.raises(ClozelabError, match="corruption.noise"):
        T5Noise(noise="geometric", **TOK)
    with pytest.raises(ClozelabError, match="corruption.density"):
        T5Noise(noise="prefix", density=0.7, **TOK)
    with pytest.raises(ClozelabError, match="corruption.mean_span"):
        T5Noise(mean_span=0, **TOK)
    c = T5Noise(noise="iid", density=0.5, n_sentinels=3, **TOK)
    with pytest.raises(ClozelabError, match="n_sentinels"):
        c(packed_batch(b=4, t=64), gen(0))


def test_data_module_builds_raw_rows_that_fill_the_source():
    from clozelab.data.datamodule import instance_length

    assert instance_length(T5Noise(**TOK), "full_sentences", 128) == 143  # [CLS] 141 [SEP]
    assert instance_length(T5Noise(**TOK), "segment_pair", 128) == 143  # [CLS] 140 with 2 [SEP]
    assert instance_length(T5Noise(**TOK), "doc_sentences", 512) == 570
    assert instance_length(None, "full_sentences", 128) == 128


@pytest.mark.parametrize(
    ("noise", "mode"), [("spans", "sentinel"), ("iid", "sentinel"), ("spans", "drop"),
                        ("prefix", "drop")],
)  # fmt: skip
def test_a_batch_without_noise_gives_eos_only_targets(noise, mode):
    """A batch none of whose rows has a noise token (a batch of one short row, or of empty rows:
    t5_iid draws none in 0.85^L of the rows) crashed with an IndexError in append_eos; each
    target is the eos alone and the source the row. (The prefix LM's one-token row is all
    suffix, so it gets an empty row.)"""
    batch = packed_batch(b=2, t=3, ragged=False)  # [CLS] x [SEP]: one token, never span noise
    for row in (1, 0) if noise == "prefix" else (1,):  # [CLS] [SEP] [PAD]: no token at all
        batch["input_ids"][row] = torch.tensor([CLS, SEP, PAD])
        batch["attention_mask"][row] = torch.tensor([1, 1, 0])
        batch["special_tokens_mask"][row] = torch.tensor([1, 1, 1])
    out = T5Noise(noise=noise, mode=mode, **TOK)(batch, gen(0))
    assert targets(out) == [[SEP], [SEP]]
    assert sources(out) == [r[1:] for r in originals(batch)]
    assert out["decoder_input_ids"].tolist() == [[PAD], [PAD]]
