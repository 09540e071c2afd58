"""The seq2seq objective: loss on the target tokens only, equal to HF's teacher-forced loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from seq2seq_batches import shift_right

from clozelab.core.errors import ClozelabError
from clozelab.model.bart import BartDecoder, BartEmbeddings
from clozelab.model.encoder import EncoderOutput, TransformerEncoder
from clozelab.model.hf_seq2seq import components_from_hf_config, from_hf_state_dict
from clozelab.model.t5 import T5Decoder, T5Embeddings, T5Encoder
from clozelab.objectives.seq2seq import Seq2Seq

V, H = 53, 16


def _models(kind: str):
    torch.manual_seed(0)
    if kind == "t5":
        return (
            T5Embeddings(V, H, 0.0),
            T5Encoder(H, 1, 2, 32, 0.0, 0.0),
            T5Decoder(H, 2, 2, 32, 0.0, 0.0),
        )
    decoder = BartDecoder(H, 2, 2, 32, V, 0.0, 0.0)
    with torch.no_grad():
        decoder.final_logits_bias.normal_()
    return BartEmbeddings(V, H, 40, dropout=0.0), TransformerEncoder(H, 1, 2, 32, 0.0, 0.0), decoder


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, V, (4, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    labels = torch.randint(4, V, (4, 10), generator=g)
    labels[0, 6:] = -100  # right-padded targets of different lengths
    labels[2, 3:] = -100
    labels[3, 9:] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "decoder_input_ids": shift_right(labels, 0, 0)}  # fmt: skip


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_loss_and_gradients_equal_the_full_logits_cross_entropy(kind):
    embedding, encoder, decoder = _models(kind)
    objective = Seq2Seq(decoder)
    batch = _batch()
    encoded = encoder(embedding(batch["input_ids"]), batch["attention_mask"])
    out = objective(encoded, batch, embedding)
    grads = torch.autograd.grad(out.loss, [embedding.word_embeddings.weight])[0]
    # reference: every position decoded to [B, L, V], cross-entropy with ignore_index
    encoded = encoder(embedding(batch["input_ids"]), batch["attention_mask"])
    hidden = decoder(batch["decoder_input_ids"], embedding, encoded.last_hidden_state,
                     batch["attention_mask"])  # fmt: skip
    logits = decoder.logits(hidden.reshape(-1, H), embedding)
    reference = F.cross_entropy(logits, batch["labels"].reshape(-1), ignore_index=-100)
    expected = torch.autograd.grad(reference, [embedding.word_embeddings.weight])[0]
    assert out.n_targets == int((batch["labels"] != -100).sum()) == 28
    assert out.loss.item() == pytest.approx(reference.item(), abs=1e-5)
    assert torch.allclose(grads, expected, atol=1e-6)
    hits = (logits.argmax(-1) == batch["labels"].reshape(-1)).sum().item()
    assert out.logs["seq2seq_acc"].item() == pytest.approx(hits / 28)


def test_targets_beyond_the_last_label_column_are_never_decoded():
    """Trailing all-padding columns are cut off before the decoder: same loss, shorter run."""
    embedding, encoder, decoder = _models("t5")
    objective = Seq2Seq(decoder)
    batch = _batch()
    wide = {**batch}
    wide["labels"] = F.pad(batch["labels"], (0, 6), value=-100)
    wide["decoder_input_ids"] = F.pad(batch["decoder_input_ids"], (0, 6), value=0)
    encoded = encoder(embedding(batch["input_ids"]), batch["attention_mask"])
    seen = []
    decoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    a, b = objective(encoded, batch, embedding), objective(encoded, wide, embedding)
    assert a.loss.item() == pytest.approx(b.loss.item(), abs=1e-6)
    assert seen == [10, 10]


def test_loss_equals_hf_t5_teacher_forced_loss():
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(vocab_size=V, d_model=H, d_kv=8, d_ff=32, num_layers=2,
                                   num_heads=2, dropout_rate=0.0, decoder_start_token_id=0,
                                   pad_token_id=0)  # fmt: skip
    torch.manual_seed(3)
    model = transformers.T5ForConditionalGeneration(config).eval()
    embedding, encoder, decoder = components_from_hf_config(config.to_dict())
    from_hf_state_dict(model.state_dict(), embedding, encoder, decoder)
    batch = _batch(2)
    with torch.no_grad():
        theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       labels=batch["labels"]).loss  # fmt: skip
        encoded = encoder(embedding(batch["input_ids"]), batch["attention_mask"])
        ours = Seq2Seq(decoder)(encoded, batch, embedding).loss
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_an_empty_target_batch_gives_a_zero_loss_with_a_graph():
    embedding, encoder, decoder = _models("bart")
    batch = _batch()
    batch["labels"] = torch.full_like(batch["labels"], -100)
    encoded = encoder(embedding(batch["input_ids"]), batch["attention_mask"])
    out = Seq2Seq(decoder)(encoded, batch, embedding)
    assert out.loss.item() == 0.0 and out.n_targets == 0
    out.loss.backward()


def test_decoder_position_ids_move_the_positions():
    """MASS: decoder positions are the fragment's positions in the sentence."""
    embedding, _encoder, decoder = _models("bart")
    batch = _batch()
    encoded = EncoderOutput(torch.randn(4, 12, H))
    base = Seq2Seq(decoder)(encoded, batch, embedding).loss
    moved = {**batch, "decoder_position_ids": torch.arange(10).expand(4, 10) + 5}
    same = {**batch, "decoder_position_ids": torch.arange(10).expand(4, 10)}
    assert Seq2Seq(decoder)(encoded, same, embedding).loss.item() == pytest.approx(base.item())
    assert Seq2Seq(decoder)(encoded, moved, embedding).loss.item() != pytest.approx(base.item())


def test_missing_decoder_and_bad_smoothing_are_refused():
    with pytest.raises(ClozelabError, match="decoder=t5"):
        Seq2Seq(None)
    with pytest.raises(ClozelabError, match="label_smoothing"):
        Seq2Seq(_models("t5")[2], label_smoothing=1.5)
    with pytest.raises(ClozelabError, match="labels"):
        embedding, _encoder, decoder = _models("t5")
        Seq2Seq(decoder)(EncoderOutput(torch.randn(2, 3, H)), {"input_ids": None}, embedding)
