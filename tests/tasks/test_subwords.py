"""Token labelling on a hand-made sentence: label the first subword or every subword with its
word's label; decode from the first subword or by combining the subwords' distributions
(issue 15, item 6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clozelab.core.errors import ClozelabError
from clozelab.tasks.features import encode_tokens, pad_batch
from clozelab.tasks.readers import TokenExample
from clozelab.tasks.tagging import TokenModel, combine_subwords

TAGS = {"O": 0, "B-LOC": 1, "I-LOC": 2}


def _sentence(tokenizer):
    """A sentence whose second word is split into several subwords (checked below)."""
    words = ["Paris", "kingdom", "good"]
    example = TokenExample(words, ["B-LOC", "I-LOC", "O"])
    (feature,) = encode_tokens(tokenizer, [example], 32, TAGS)
    return words, feature


def test_features_give_each_word_its_subwords(tiny_backbone):
    tokenizer = tiny_backbone().tokenizer
    words, f = _sentence(tokenizer)
    pieces = [len(tokenizer.hf.encode(w, add_special_tokens=False).ids) for w in words]
    assert pieces[1] >= 2  # "kingdom": king ##d ##o ##m
    # [CLS] Paris-pieces xqzwv-pieces good-pieces [SEP]
    expected_words = [-1] + [w for w, n in enumerate(pieces) for _ in range(n)] + [-1]
    assert f["token_words"] == expected_words
    starts = [expected_words.index(w) for w in range(3)]
    ends = [len(expected_words) - 1 - expected_words[::-1].index(w) for w in range(3)]
    assert f["word_starts"] == starts and f["word_ends"] == ends
    assert f["word_labels"] == [1, 2, 0]
    (short,) = encode_tokens(tokenizer, [TokenExample(["good"], ["O"])], 32, TAGS)
    batch = pad_batch([f, short], tokenizer.pad_id)
    assert batch["token_words"].shape == batch["input_ids"].shape
    assert batch["token_words"][1].tolist() == [-1, 0, -1] + [-1] * (len(expected_words) - 3)


@pytest.mark.parametrize("subword_labels", ["first", "all"])
def test_training_loss_by_hand(tiny_backbone, subword_labels):
    torch.manual_seed(0)
    backbone = tiny_backbone()
    _, f = _sentence(backbone.tokenizer)
    batch = pad_batch([f], backbone.tokenizer.pad_id)
    model = TokenModel(backbone, 3, dropout=0.0, subword_labels=subword_labels).eval()
    with torch.no_grad():
        loss = model(batch)["loss"]
        tokens = model.output(model.hidden(batch))[0]  # (T, L)
    words = f["token_words"]
    if subword_labels == "first":  # only each word's first subword is scored
        positions = f["word_starts"]
        targets = f["word_labels"]
    else:  # every subword of a word carries the word's label; [CLS]/[SEP] none
        positions = [t for t, w in enumerate(words) if w >= 0]
        targets = [f["word_labels"][words[t]] for t in positions]
    by_hand = F.cross_entropy(tokens[positions], torch.tensor(targets))
    torch.testing.assert_close(loss, by_hand)


def test_decoding_first_subword_or_combined_distributions():
    # one sentence, 5 tokens: [CLS] w0 w1a w1b [SEP]; 2 labels
    tokens = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.2, 0.0], [-4.0, 0.0], [0.0, 0.0]]])
    token_words = torch.tensor([[-1, 0, 1, 1, -1]])
    starts = torch.tensor([[1, 2]])
    p = tokens.softmax(-1)[0]
    combined = combine_subwords(tokens, token_words, starts).exp()[0]
    torch.testing.assert_close(combined[0], p[1])  # one subword: its own distribution
    torch.testing.assert_close(combined[1], (p[2] + p[3]) / 2)  # the mean of the two
    # first subword of w1 says label 0 (0.2 > 0), the average of its two says label 1
    assert p[2].argmax() == 0 and combined[1].argmax() == 1
    model = TokenModel.__new__(TokenModel)
    torch.nn.Module.__init__(model)
    model.crf = None
    mask = torch.tensor([[True, True]])
    first = model.predict_tags({"emissions": tokens[:, [1, 2]]}, mask)
    mean = model.predict_tags(
        {"emissions": tokens[:, [1, 2]], "decode_scores": combined.log()[None]}, mask
    )
    assert first == [[0, 0]] and mean == [[0, 1]]
    # raw emission averaging (the CRF's input) and a word without tokens of its own
    raw = combine_subwords(tokens, torch.tensor([[-1, 0, 0, 0, -1]]), starts, log_probs=False)[0]
    torch.testing.assert_close(raw[0], tokens[0, 1:4].mean(0))
    torch.testing.assert_close(raw[1], tokens[0, 2])  # no tokens: its first-subword position


def test_model_decodes_with_mean_and_refuses_crf_with_all(tiny_backbone):
    torch.manual_seed(0)
    backbone = tiny_backbone()
    _, f = _sentence(backbone.tokenizer)
    batch = pad_batch([f], backbone.tokenizer.pad_id)
    model = TokenModel(backbone, 3, dropout=0.0, subword_decoding="mean").eval()
    with torch.no_grad():
        out = model(batch)
        tokens = model.output(model.hidden(batch))
    expected = combine_subwords(tokens, batch["token_words"], batch["word_starts"])
    torch.testing.assert_close(out["decode_scores"], expected)
    tags = model.predict_tags(out, batch["word_mask"])
    assert tags == [expected[0].argmax(-1).tolist()]
    with pytest.raises(ClozelabError, match="task.subword_labels"):
        TokenModel(backbone, 3, decoder="crf", subword_labels="all")
    with pytest.raises(ClozelabError, match="task.subword_decoding"):
        TokenModel(backbone, 3, subword_decoding="last")
