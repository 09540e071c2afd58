"""RTD (ELECTRA): generator size, Gumbel sampling, labels, loss weighting, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clozelab.core.errors import ClozelabError
from clozelab.model.embeddings import BertEmbeddings
from clozelab.model.encoder import EncoderOutput
from clozelab.objectives.rtd import RTD, generator_heads, gumbel_sample

H, V, T = 32, 50, 8
MASK = 4


def _batch():
    torch.manual_seed(0)
    original = torch.randint(10, V, (2, T))
    labels = torch.full((2, T), -100)
    labels[0, [2, 5]] = original[0, [2, 5]]
    labels[1, [1]] = original[1, [1]]
    ids = original.clone()
    ids[labels != -100] = MASK
    attention = torch.ones(2, T, dtype=torch.long)
    attention[1, 6:] = 0
    return original, {"input_ids": ids, "mlm_labels": labels, "attention_mask": attention,
                      "token_type_ids": torch.zeros_like(ids)}  # fmt: skip


def test_generator_size_and_shared_embeddings():
    rtd = RTD(H, V, num_layers=3, generator_fraction=0.25)
    assert rtd.generator_hidden == 8 and rtd.generator.num_layers == 3
    assert rtd.generator.intermediate_size == 32 and rtd.generator.num_heads == 1
    assert generator_heads(256) == 4 and generator_heads(96) == 1
    names = [n for n, _ in rtd.named_parameters()]
    assert not any("word_embeddings" in n for n in names)  # the table is the main embedding's


def test_gumbel_sampling_follows_the_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(20000, 3)
    counts = torch.bincount(gumbel_sample(logits, generator=torch.Generator().manual_seed(0)),
                            minlength=3).float() / 20000  # fmt: skip
    torch.testing.assert_close(counts, logits[0].softmax(-1), atol=0.015, rtol=0)


@pytest.mark.parametrize("samples_original", [True, False])
def test_labels_when_the_generator_samples_the_original(monkeypatch, samples_original):
    original, batch = _batch()
    rtd = RTD(H, V, num_layers=1)
    emb = BertEmbeddings(V, H)

    def fixed_logits(batch, embedding, positions):
        targets = batch["mlm_labels"].reshape(-1)[positions]
        wanted = targets if samples_original else (targets + 1) % V
        logits = torch.full((len(positions), V), -1e4)
        logits[torch.arange(len(positions)), wanted] = 1e4
        return logits.requires_grad_()

    monkeypatch.setattr(rtd, "generator_logits", fixed_logits)
    out = rtd.prepare_inputs(batch, emb)
    masked = batch["mlm_labels"] != -100
    if samples_original:
        assert torch.equal(out["input_ids"], original)
        assert out["rtd_labels"].sum() == 0  # a correct sample counts as original
    else:
        assert torch.equal(out["rtd_labels"].bool(), masked)
        assert torch.equal(out["input_ids"][~masked], original[~masked])
    assert torch.equal(batch["input_ids"][masked], torch.full((3,), MASK))  # input not mutated


def test_loss_is_generator_mlm_plus_50_times_discriminator():
    _, batch = _batch()
    rtd = RTD(H, V, num_layers=1, discriminator_weight=50.0)
    emb = BertEmbeddings(V, H)
    positions = (batch["mlm_labels"].reshape(-1) != -100).nonzero().squeeze(1)
    torch.manual_seed(1)
    rtd.eval()
    emb.eval()
    gen_logits = rtd.generator_logits(batch, emb, positions)
    gen_loss = F.cross_entropy(gen_logits, batch["mlm_labels"].reshape(-1)[positions])
    prepared = rtd.prepare_inputs(batch, emb)
    hidden = torch.randn(2, T, H)
    out = rtd(EncoderOutput(hidden), prepared, emb)
    z = rtd.discriminator_head(hidden)
    keep = batch["attention_mask"].bool()
    disc = F.binary_cross_entropy_with_logits(z[keep], prepared["rtd_labels"][keep].float())
    torch.testing.assert_close(out.logs["rtd_generator_loss"], gen_loss.detach())
    torch.testing.assert_close(out.logs["rtd_discriminator_loss"], disc.detach())
    torch.testing.assert_close(out.loss, gen_loss + 50.0 * disc)
    assert out.n_targets == int(keep.sum())  # every non-pad token, specials included
    out.loss.backward()
    assert emb.word_embeddings.weight.grad is not None
    assert rtd.generator.layers[0].attention.qkv.weight.grad is not None


def test_forward_without_the_generator_is_refused():
    rtd = RTD(H, V, num_layers=1)
    with pytest.raises(ClozelabError, match="prepare_inputs"):
        rtd(EncoderOutput(torch.randn(1, T, H)), {"mlm_labels": torch.zeros(1, T)}, None)
