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
