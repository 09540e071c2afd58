"""The HF directory of a T5 run carries T5's sentinels in its tokenizer: ``<extra_id_i>`` at the
ids the span corruption writes (``<extra_id_0>`` highest), so HF tokenizers encode them and decode
our targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clozelab.corruption.t5 import T5Noise
from clozelab.data.tokenizer import load_tokenizer, train_wordpiece
from clozelab.model.t5 import T5Decoder, T5Embeddings, T5Encoder
from clozelab.training.hf_export import write_seq2seq_hf_dir

transformers = pytest.importorskip("transformers")

TEXTS = ["the cat sat on the mat while the dog slept by the door"] * 40 + [
    "a bird sang in the tall tree near the old house"
] * 40
N_SENTINELS = 7


def _t5_run_dir(tmp_path):
    tokenizer = train_wordpiece(TEXTS, vocab_size=200, min_frequency=1)
    tokenizer.save(tmp_path / "tokenizer")
    vocab = tokenizer.vocab_size + N_SENTINELS
    torch.manual_seed(0)
    embedding = T5Embeddings(vocab, 16)
    encoder, decoder = T5Encoder(16, 1, 2, 32), T5Decoder(16, 1, 2, 32)
    out = write_seq2seq_hf_dir(tmp_path / "hf", embedding, encoder, decoder,
                               tmp_path / "tokenizer")  # fmt: skip
    return tokenizer, out


def test_exported_t5_tokenizer_has_the_sentinels_at_the_corruption_ids(tmp_path):
    ours, out = _t5_run_dir(tmp_path)
    V = ours.vocab_size
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert len(hf_tok) == config["vocab_size"] == V + N_SENTINELS
    for i in range(N_SENTINELS):  # SentinelIds: <extra_id_i> = V + n - 1 - i
        assert hf_tok.convert_tokens_to_ids(f"<extra_id_{i}>") == V + N_SENTINELS - 1 - i
    assert {f"<extra_id_{i}>" for i in range(N_SENTINELS)} <= set(hf_tok.all_special_tokens)
    # encoding keeps a sentinel whole, next to ordinary words
    ids = hf_tok("the cat <extra_id_0> mat", add_special_tokens=False)["input_ids"]
    assert V + N_SENTINELS - 1 in ids and len(ids) == 4
    # the slow tokenizer reads the same ids from vocab.txt
    lines = (out / "vocab.txt").read_text("utf-8").splitlines()
    assert lines[V] == f"<extra_id_{N_SENTINELS - 1}>" and lines[-1] == "<extra_id_0>"
    # and the run's own tokenizer directory is untouched (its vocabulary is the model's minus n)
    assert load_tokenizer(tmp_path / "tokenizer").vocab_size == V


def test_hf_decodes_the_targets_of_t5_span_corruption(tmp_path):
    ours, out = _t5_run_dir(tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    words = ours.encode_batch(["the cat sat on the mat while the dog slept by the door"])[0].ids
    row = [ours.cls_id, *words, ours.sep_id]
    batch = {
        "input_ids": torch.tensor([row]),
        "attention_mask": torch.ones(1, len(row), dtype=torch.long),
        "special_tokens_mask": torch.tensor([[1] + [0] * len(words) + [1]]),
    }
    corruption = T5Noise(density=0.3, mean_span=2.0, n_sentinels=N_SENTINELS,
                         vocab_size=ours.vocab_size, mask_token_id=ours.mask_id,
                         special_token_ids=ours.special_ids, pad_token_id=ours.pad_id,
                         eos_token_id=ours.sep_id)  # fmt: skip
    out_batch = corruption(batch, torch.Generator().manual_seed(0))
    labels = out_batch["labels"][0]
    target = labels[labels != -100].tolist()
    source = out_batch["input_ids"][0][out_batch["attention_mask"][0].bool()].tolist()
    decoded_target = hf_tok.decode(target)
    decoded_source = hf_tok.decode(source)
    n_spans = int(np.sum(np.asarray(target) >= ours.vocab_size))
    assert n_spans >= 1
    for i in range(n_spans):  # every sentinel prints as T5's token on both sides
        assert f"<extra_id_{i}>" in decoded_target and f"<extra_id_{i}>" in decoded_source
    assert decoded_target.startswith("<extra_id_0>")
    # the decoded text reads back as the same ids (sentinels, WordPiece tokens and the eos)
    assert hf_tok(decoded_target, add_special_tokens=False)["input_ids"] == target


def test_exported_seq2seq_tokenizer_feeds_the_hf_model_directly(tmp_path):
    """``model.generate(**tok(text))`` works on the export: T5/BART take no token_type_ids, so
    the exported tokenizer returns input_ids and attention_mask only."""
    _, out = _t5_run_dir(tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
    inputs = hf_tok(["the cat <extra_id_0> mat", "a bird"], return_tensors="pt", padding=True)
    assert set(inputs) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        out_ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        logits = model(**inputs, decoder_input_ids=out_ids[:, :1]).logits
    assert out_ids.shape[0] == 2 and logits.shape[:2] == (2, 1)
