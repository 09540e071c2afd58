"""Greedy decoding (equal to HF T5's greedy generate) and the text-to-text task pieces."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from clozelab.core.errors import ClozelabError
from clozelab.data.tokenizer import train_wordpiece
from clozelab.model.generate import greedy_decode, strip_after_eos
from clozelab.model.hf_seq2seq import components_from_hf_config, from_hf_state_dict
from clozelab.model.t5 import T5Decoder, T5Embeddings, T5Encoder
from clozelab.tasks.features import pad_batch, pad_targets
from clozelab.tasks.generation import (
    GenerationModel,
    encode_generation,
    score_generation,
    text_pairs,
)
from clozelab.tasks.readers import QAExample, TextExample


def test_greedy_decode_equals_hf_t5_greedy_generate():
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(vocab_size=60, d_model=16, d_kv=8, d_ff=32, num_layers=2,
                                   num_heads=2, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():  # make eos likely after a few steps, so early stops are exercised
        model.shared.weight[1] *= 3
    embedding, encoder, decoder = components_from_hf_config(config.to_dict())
    from_hf_state_dict(model.state_dict(), embedding, encoder, decoder)
    for m in (embedding, encoder, decoder):
        m.eval()
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, 60, (5, 9), generator=g)
    mask = torch.ones_like(input_ids)
    mask[2, 6:] = 0
    ours = greedy_decode(embedding, encoder, decoder, input_ids, mask, 0, 1, 0, max_length=12)
    theirs = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=12,
                            do_sample=False, num_beams=1)[:, 1:]  # fmt: skip
    width = max(ours.shape[1], theirs.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    assert torch.equal(pad(ours), pad(theirs))
    assert strip_after_eos([5, 6, 1, 0], 1) == [5, 6] and strip_after_eos([5], 1) == [5]


def _random_pair(layout: str):
    """Random small T5 / BART components (eval mode) with non-trivial weights."""
    from clozelab.model.bart import BartDecoder, BartEmbeddings
    from clozelab.model.encoder import TransformerEncoder

    torch.manual_seed(3)
    if layout == "t5":
        parts = T5Embeddings(60, 16), T5Encoder(16, 2, 2, 32), T5Decoder(16, 3, 2, 32)
    else:
        parts = (BartEmbeddings(60, 16, max_position_embeddings=40),
                 TransformerEncoder(16, 2, 2, 32, layer_norm_eps=1e-5),
                 BartDecoder(16, 2, 2, 32, vocab_size=60, max_position_embeddings=40))  # fmt: skip
    with torch.no_grad():
        parts[2].layers[0].feed_forward.fc1.weight.mul_(3)
    return tuple(m.eval() for m in parts)


@pytest.mark.parametrize("layout", ["t5", "bart"])
def test_cached_greedy_decode_equals_the_uncached_one(layout):
    """The key/value cache (one token per step, cross-attention projected once) writes exactly
    what re-reading the whole prefix writes, and its per-step states equal the full pass's."""
    embedding, encoder, decoder = _random_pair(layout)
    g = torch.Generator().manual_seed(2)
    input_ids = torch.randint(5, 60, (6, 11), generator=g)
    mask = torch.ones_like(input_ids)
    mask[1, 7:] = 0
    mask[4, 3:] = 0
    for eos in (1, 60):  # early stops; an eos never written (every row runs 15 steps)
        args = (embedding, encoder, decoder, input_ids, mask, 0, eos, 0)
        cached = greedy_decode(*args, max_length=15, use_cache=True)
        assert torch.equal(cached, greedy_decode(*args, max_length=15, use_cache=False))
    assert cached.shape[1] == 15
    with torch.no_grad():  # states: step by step through the cache == one teacher-forced pass
        memory = encoder(embedding(input_ids), mask).last_hidden_state
        prefix = torch.randint(0, 60, (6, 9), generator=g)  # any target prefix
        full = decoder(prefix, embedding, memory, mask)
        cache = decoder.new_cache()
        steps = [decoder(prefix[:, i : i + 1], embedding, memory, mask, cache=cache)
                 for i in range(prefix.shape[1])]  # fmt: skip
        two = decoder.new_cache()  # a cache also takes several positions at once
        chunks = [decoder(prefix[:, :4], embedding, memory, mask, cache=two),
                  decoder(prefix[:, 4:], embedding, memory, mask, cache=two)]  # fmt: skip
    assert cache.length == prefix.shape[1]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    assert torch.allclose(torch.cat(chunks, 1), full, atol=1e-5)


def _tokenizer():
    return train_wordpiece(["the film is great", "the film is awful", "positive negative",
                            "who wrote it question context paris"] * 5, vocab_size=120)  # fmt: skip


def test_pairs_features_and_scores():
    task = OmegaConf.create({"name": "sst2", "label_words": {"0": "negative", "1": "positive"}})
    question = QAExample("q1", "who wrote it", "paris wrote it", ["paris"])
    pairs = text_pairs(task, [TextExample("the film is great", label="1"), question])
    assert pairs[0].source == "sst2 sentence: the film is great" and pairs[0].target == "positive"
    assert pairs[1].source.startswith("question: who wrote it context:")
    tok = _tokenizer()
    features = encode_generation(tok, pairs, 16, 4, start_id=tok.pad_id)
    f = features[0]
    assert f["input_ids"][0] == tok.cls_id and f["input_ids"][-1] == tok.sep_id
    assert f["target_ids"][-1] == tok.sep_id
    assert f["decoder_input_ids"] == [tok.pad_id, *f["target_ids"][:-1]]
    padded = pad_targets(features, tok.pad_id)
    assert (padded["labels"] == -100).sum() == padded["labels"].numel() - sum(
        len(x["target_ids"]) for x in features
    )
    scores = score_generation(["Positive", "london"], pairs, ["accuracy", "exact_match", "f1"])
    assert scores == {"accuracy": 0.5, "exact_match": 50.0, "f1": 50.0}
    with pytest.raises(ClozelabError, match="generation metrics"):
        score_generation(["x"], pairs[:1], ["mcc"])
    with pytest.raises(ClozelabError, match="generation"):
        text_pairs(task, [TextExample("unlabelled")])


def test_a_tiny_encoder_decoder_learns_label_words_and_generates_them():
    tok = _tokenizer()
    task = OmegaConf.create({"name": "sst2", "label_words": {"0": "negative", "1": "positive"}})
    examples = [TextExample("the film is great", label="1"),
                TextExample("the film is awful", label="0")]  # fmt: skip
    pairs = text_pairs(task, examples)
    torch.manual_seed(0)
    V, H = tok.vocab_size, 32
    model = GenerationModel(T5Embeddings(V, H, 0.0), T5Encoder(H, 1, 2, 64, 0.0, 0.0),
                            T5Decoder(H, 1, 2, 64, 0.0, 0.0), tok, max_target_length=4)  # fmt: skip
    features = encode_generation(tok, pairs, 16, 4, model.start_id)
    batch = pad_batch(features, tok.pad_id)  # labels and decoder inputs from target_ids
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        model(batch)["loss"].backward()
        optimizer.step()
    model.eval()
    predictions = [tok.hf.decode(ids) for ids in model.generate(batch)]
    assert predictions == ["positive", "negative"]
    assert score_generation(predictions, pairs, ["accuracy"]) == {"accuracy": 1.0}


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_seq_length", 1), ("max_seq_length", 3), ("max_target_length", 0),
     ("max_target_length", 1)],
)  # fmt: skip
def test_too_short_task_lengths_are_refused_naming_the_key(key, value):
    """task.max_seq_length=1 / task.max_target_length=0 cut with a negative slice and kept
    nearly the whole text (a 10-token source under a limit of 1); they are refused instead."""
    from types import SimpleNamespace

    from clozelab.tasks.generation import GenerationTask

    task = GenerationTask(OmegaConf.create({"name": "sst2_generate", key: value}))
    backbone = SimpleNamespace(max_positions=512)
    with pytest.raises(ClozelabError, match=rf"task\.{key}={value}: must be an integer >="):
        task.max_length(backbone) if key == "max_seq_length" else task.target_length()
    ok = GenerationTask(OmegaConf.create({"name": "sst2_generate"}))
    assert ok.max_length(backbone) == 128 and ok.target_length() == 32
