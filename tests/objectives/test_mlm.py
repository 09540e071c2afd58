"""MLM: loss = HF cross-entropy over predicted positions, tied decoder, empty batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clozelab.core.errors import ClozelabError
from clozelab.model.embeddings import BertEmbeddings
from clozelab.model.encoder import EncoderOutput
from clozelab.objectives import mlm as mlm_module
from clozelab.objectives.base import Objective, ObjectiveOutput
from clozelab.objectives.mlm import MLM, tied_decoder_cross_entropy

V, H, B, T = 99, 32, 3, 9


@pytest.fixture
def parts():
    torch.manual_seed(0)
    emb = BertEmbeddings(V, H)
    mlm = MLM(H, V)
    with torch.no_grad():
        mlm.bias.normal_()  # a non-zero bias so the test sees it
    hidden = torch.randn(B, T, H, requires_grad=True)
    labels = torch.full((B, T), -100)
    labels[0, 1], labels[0, 4], labels[1, 2], labels[2, 8] = 5, 17, 98, 0
    return emb, mlm, hidden, labels


def _params(emb, mlm, hidden):
    return [hidden, emb.word_embeddings.weight, mlm.bias, *mlm.transform.parameters()]


def test_contract():
    mlm = MLM(H, V, weight=0.5)
    assert isinstance(mlm, Objective)
    assert mlm.name == "mlm" and mlm.requires == ("mlm_labels",)
    assert mlm.instance_kinds is None and mlm.weight == 0.5
    assert mlm.bias.shape == (V,) and mlm.bias.abs().sum() == 0
    with pytest.raises(ClozelabError, match="weight"):
        MLM(H, V, weight=-1.0)


def test_loss_equals_cross_entropy_over_full_logits(parts):
    emb, mlm, hidden, labels = parts
    out = mlm(EncoderOutput(hidden), {"mlm_labels": labels}, emb)
    assert isinstance(out, ObjectiveOutput)
    assert out.n_targets == 4
    params = _params(emb, mlm, hidden)
    grads = torch.autograd.grad(out.loss, params)

    full = mlm.logits(hidden, emb)  # (B, T, V)
    assert full.shape == (B, T, V)
    ref = F.cross_entropy(full.view(-1, V), labels.view(-1), ignore_index=-100)
    ref_grads = torch.autograd.grad(ref, params)
    torch.testing.assert_close(out.loss, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.logs["mlm_loss"], ref.detach())
    acc = (full.argmax(-1)[labels != -100] == labels[labels != -100]).float().mean()
    torch.testing.assert_close(out.logs["mlm_acc"], acc)


def test_chunked_decoding_is_exact(parts, monkeypatch):
    emb, mlm, hidden, labels = parts
    batch = {"mlm_labels": labels}
    whole = mlm(EncoderOutput(hidden), batch, emb).loss
    g_whole = torch.autograd.grad(whole, _params(emb, mlm, hidden))
    monkeypatch.setattr(mlm_module, "CHUNK_ELEMENTS", V)  # one row per chunk
    monkeypatch.setattr(mlm_module, "VOCAB_BLOCK", 10)  # ten blocks per row, the last short
    chunked = mlm(EncoderOutput(hidden), batch, emb).loss
    g_chunked = torch.autograd.grad(chunked, _params(emb, mlm, hidden))
    torch.testing.assert_close(chunked, whole)
    for a, b in zip(g_chunked, g_whole):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("chunk, block", [(1 << 22, 2048), (14, 3)])
def test_fused_cross_entropy_gradcheck(chunk, block, monkeypatch):
    monkeypatch.setattr(mlm_module, "CHUNK_ELEMENTS", chunk)  # 2 rows per chunk when 14
    monkeypatch.setattr(mlm_module, "VOCAB_BLOCK", block)
    torch.manual_seed(0)
    h = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 6, 3, 3, 1])
    assert torch.autograd.gradcheck(lambda *x: tied_decoder_cross_entropy(*x, t)[0], (h, w, b))


def test_no_predicted_position_gives_zero_not_nan(parts):
    emb, mlm, hidden, _ = parts
    labels = torch.full((B, T), -100)
    out = mlm(EncoderOutput(hidden), {"mlm_labels": labels}, emb)
    assert out.loss.item() == 0.0
    assert out.loss.requires_grad and out.n_targets == 0
    assert out.logs["mlm_acc"].item() == 0.0
    out.loss.backward()
    assert torch.isfinite(hidden.grad).all() and hidden.grad.abs().sum() == 0
    assert torch.isfinite(emb.word_embeddings.weight.grad).all()


def test_decoder_is_tied_to_word_embeddings(parts):
    emb, mlm, hidden, labels = parts
    weight = mlm.decoder_weight(emb)
    assert weight is emb.word_embeddings.weight
    assert weight.data_ptr() == emb.word_embeddings.weight.data_ptr()
    assert not any(p.shape == (V, H) for p in mlm.parameters())  # no decoder matrix of its own
    mlm(EncoderOutput(hidden), {"mlm_labels": labels}, emb).loss.backward()
    assert emb.word_embeddings.weight.grad.abs().sum(1).gt(0).all()  # every row gets a gradient


def test_accuracy_is_one_when_targets_are_the_argmax(parts):
    emb, mlm, hidden, labels = parts
    with torch.no_grad():
        pred = mlm.logits(hidden, emb).argmax(-1)
    labels = torch.where(labels != -100, pred, labels)
    out = mlm(EncoderOutput(hidden), {"mlm_labels": labels}, emb)
    assert out.logs["mlm_acc"].item() == 1.0


def test_missing_labels_and_vocab_mismatch(parts):
    emb, mlm, hidden, _ = parts
    with pytest.raises(ClozelabError, match="mlm_labels"):
        mlm(EncoderOutput(hidden), {}, emb)
    with pytest.raises(ClozelabError, match="vocab_size"):
        MLM(H, V + 1).logits(hidden, emb)


def test_no_grad_and_autocast(parts):
    emb, mlm, hidden, labels = parts
    batch = {"mlm_labels": labels}
    ref = mlm(EncoderOutput(hidden), batch, emb).loss
    with torch.no_grad():
        torch.testing.assert_close(mlm(EncoderOutput(hidden), batch, emb).loss, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = mlm(EncoderOutput(hidden), batch, emb).loss
    assert low.dtype == torch.float32
    assert abs(low.item() - ref.item()) < 0.05
    low.backward()
    assert hidden.grad.dtype == torch.float32 and torch.isfinite(hidden.grad).all()


def test_factorized_embedding_size():
    torch.manual_seed(0)
    emb = BertEmbeddings(V, 16)  # E = 16 < H = 32
    mlm = MLM(H, V, embedding_size=16)
    labels = torch.full((2, 4), -100)
    labels[0, 0] = 3
    out = mlm(EncoderOutput(torch.randn(2, 4, H)), {"mlm_labels": labels}, emb)
    assert out.n_targets == 1 and torch.isfinite(out.loss)
