"""SBO: the SPECS §9 head, hand-computed loss, 15-target cap, edge spans skipped, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clozelab.core.errors import ClozelabError
from clozelab.model.embeddings import BertEmbeddings
from clozelab.model.encoder import EncoderOutput
from clozelab.objectives.sbo import SBO

H, V = 16, 50


def _reference(sbo, hidden, spans, labels, emb_weight):
    """Loop over (row, first, last) spans: the SpanBERT head written out by hand."""
    total, n = torch.zeros(()), 0
    for row, s, e in spans:
        for i in range(min(e - s + 1, 15)):
            t = int(labels[row, s + i])
            if t == -100:
                continue
            h0 = torch.cat(
                [hidden[row, s - 1], hidden[row, e + 1], sbo.position_embeddings.weight[i]]
            )
            h1 = F.layer_norm(F.gelu(h0 @ sbo.dense1.weight.T + sbo.dense1.bias), (H,),
                              sbo.norm1.weight, sbo.norm1.bias, 1e-12)  # fmt: skip
            y = F.layer_norm(F.gelu(h1 @ sbo.dense2.weight.T + sbo.dense2.bias), (H,),
                             sbo.norm2.weight, sbo.norm2.bias, 1e-12)  # fmt: skip
            logits = y @ emb_weight.T + sbo.bias
            total = total - torch.log_softmax(logits, -1)[t]
            n += 1
    return total / (n + 1), n


def _batch():
    # row 0: [CLS] t1..t20 [SEP] pad pad; row 1: [CLS] a b [SEP] c d e [SEP]
    T = 24
    special = torch.zeros(2, T, dtype=torch.long)
    special[0, [0, 21, 22, 23]] = 1
    special[1, [0, 3, 7]] = 1
    special[1, 8:] = 1
    attention = torch.ones(2, T, dtype=torch.long)
    attention[0, 22:] = 0
    attention[1, 8:] = 0
    labels = torch.full((2, T), -100)
    spans = [(0, 2, 4), (0, 6, 20), (0, 1, 1), (1, 4, 4), (1, 5, 5), (1, 1, 1)]
    # (0,2,4): inside; (0,6,20): 15 tokens... right boundary is [SEP] -> skipped;
    # (0,1,1): left boundary is [CLS] -> skipped; (1,4,4): left boundary is the middle [SEP]
    # -> skipped; (1,5,5): inside segment B; (1,1,1): edge.
    for row, s, e in spans:
        labels[row, s : e + 1] = torch.randint(5, V, (e - s + 1,))
    bounds = torch.full((2, 3, 2), -1)
    bounds[0, :3] = torch.tensor([[1, 1], [2, 4], [6, 20]])
    bounds[1, :3] = torch.tensor([[1, 1], [4, 4], [5, 5]])
    batch = {"span_bounds": bounds, "mlm_labels": labels, "special_tokens_mask": special,
             "attention_mask": attention}  # fmt: skip
    return batch, [(0, 2, 4), (1, 5, 5)]


def test_head_shapes_and_hand_computed_loss():
    torch.manual_seed(0)
    sbo = SBO(H, V, weight=1.0)
    emb = BertEmbeddings(V, H)
    assert sbo.position_embeddings.weight.shape == (15, 200)
    assert sbo.dense1.weight.shape == (H, 2 * H + 200) and sbo.dense2.weight.shape == (H, H)
    assert sbo.bias.shape == (V,) and not any(
        p is emb.word_embeddings.weight for p in sbo.parameters()
    )
    batch, kept = _batch()
    hidden = torch.randn(2, 24, H, requires_grad=True)
    out = sbo(EncoderOutput(hidden), batch, emb)
    expected, n = _reference(sbo, hidden, kept, batch["mlm_labels"], emb.word_embeddings.weight)
    assert out.n_targets == n == 4
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert emb.word_embeddings.weight.grad is not None  # the decoder is tied
    assert hidden.grad[0, 1].abs().sum() > 0 and hidden.grad[0, 5].abs().sum() > 0
    assert hidden.grad[0, 3].abs().sum() == 0  # a state inside the span is never a boundary


def test_at_most_15_targets_per_span():
    sbo = SBO(H, V)
    T = 30
    labels = torch.full((1, T), -100)
    labels[0, 2:24] = 7  # one 22-token span with real boundaries at 1 and 24
    special = torch.zeros(1, T, dtype=torch.long)
    special[0, [0, T - 1]] = 1
    bounds = torch.tensor([[[2, 23]]])
    batch = {"span_bounds": bounds, "mlm_labels": labels, "special_tokens_mask": special}
    _, left, right, rel, _ = sbo.targets(batch)
    assert rel.tolist() == list(range(15)) and set(left.tolist()) == {1}
    assert set(right.tolist()) == {24}


def test_spans_at_the_sequence_edges_get_no_target():
    sbo = SBO(H, V)
    labels = torch.full((1, 6), -100)
    labels[0, 0:2] = 9
    labels[0, 4:6] = 9
    batch = {"span_bounds": torch.tensor([[[0, 1], [4, 5]]]), "mlm_labels": labels,
             "special_tokens_mask": torch.zeros(1, 6, dtype=torch.long)}  # fmt: skip
    assert sbo.targets(batch)[0].numel() == 0
    out = sbo(EncoderOutput(torch.randn(1, 6, H)), batch, BertEmbeddings(V, H))
    assert out.n_targets == 0 and out.loss.item() == 0.0


def test_factorized_embedding_width():
    sbo = SBO(H, V, embedding_size=8)
    assert sbo.dense2.weight.shape == (8, H)
    batch, _ = _batch()
    out = sbo(EncoderOutput(torch.randn(2, 24, H)), batch, BertEmbeddings(V, 8))
    assert torch.isfinite(out.loss)


def test_weight_and_requirements():
    assert SBO(H, V, weight=0.5).weight == 0.5
    with pytest.raises(ClozelabError, match="span_bounds"):
        SBO.check_compatible("full_sentences", ["input_ids", "mlm_labels"])
