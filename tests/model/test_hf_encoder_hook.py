"""The HF BERT mapping asks the encoder for its layers through ``Encoder.hf_layout`` (no
isinstance switch on ``TransformerEncoder``): a user's encoder without the hook is refused saying
which hook to declare, one that declares its layout exports as an exact HF BERT and imports back,
and a layout whose config lacks HF BERT's sizes is refused naming them."""

from __future__ import annotations

import json

import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.model.embeddings import BertEmbeddings
from clozelab.model.encoder import Encoder, EncoderOutput, HFEncoderLayout, TransformerEncoder
from clozelab.model.hf import from_hf_state_dict, hf_config_dict, to_hf_state_dict
from clozelab.objectives.mlm import MLM
from clozelab.training.hf_export import write_run_hf_dir
from tests.helpers import perturbed

V, H, T = 50, 16, 8
BODY = dict(hidden_size=H, num_layers=2, num_heads=2, intermediate_size=32)


class PlainUserEncoder(Encoder):
    """A user's encoder that declares nothing about HF."""

    def __init__(self, hidden_size: int, **_):
        super().__init__()
        self.hidden_size, self.num_layers = hidden_size, 1
        self.dense = torch.nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden, attention_mask=None, output_hidden_states=False):
        return EncoderOutput(self.dense(hidden))


class WrappedBertEncoder(Encoder):
    """A user's encoder holding BERT's layers under its own names: its ``hf_layout`` says which
    HF keys they are."""

    def __init__(self, **body):
        super().__init__()
        self.inner = TransformerEncoder(**body)
        self.hidden_size, self.num_layers = self.inner.hidden_size, self.inner.num_layers

    def forward(self, hidden, attention_mask=None, output_hidden_states=False):
        return self.inner(hidden, attention_mask, output_hidden_states)

    def hf_layout(self) -> HFEncoderLayout:
        return self.inner.hf_layout()


class SizelessEncoder(WrappedBertEncoder):
    def hf_layout(self) -> HFEncoderLayout:
        layout = self.inner.hf_layout()
        return HFEncoderLayout(layout.tables, {"num_hidden_layers": self.num_layers})


def test_a_user_encoder_without_the_hook_is_refused_naming_it(tmp_path):
    embedding, encoder = BertEmbeddings(V, H), PlainUserEncoder(H)
    message = (
        r"^embedding/encoder='BertEmbeddings/PlainUserEncoder': HF BERT weights map only onto "
        r".*or components whose hf_layout\(\) gives their HF tables.*Fix: .*a component of your "
        r"own declares its HF tables in hf_layout\(\) \(or why it has none in hf_export_refusal\)"
    )
    for call in (
        lambda: to_hf_state_dict(embedding, encoder),
        lambda: from_hf_state_dict({}, embedding, encoder),
        lambda: hf_config_dict(embedding, encoder),
        lambda: write_run_hf_dir(tmp_path / "hf", embedding, encoder, {}, tmp_path),
    ):
        with pytest.raises(ClozelabError, match=message):
            call()
    assert not (tmp_path / "hf").exists()


def test_a_user_encoder_that_says_why_is_refused_with_its_reason():
    class Recurrent(PlainUserEncoder):
        hf_export_refusal = ("my recurrent layers have no HF BERT equivalent", "keep the run")

    with pytest.raises(ClozelabError, match=r"^encoder='Recurrent': my recurrent .*Fix: keep"):
        to_hf_state_dict(BertEmbeddings(V, H), Recurrent(H))


def test_a_user_encoder_that_declares_its_layout_exports_as_exact_hf_bert(tmp_path):
    transformers = pytest.importorskip("transformers")
    embedding, encoder, mlm = perturbed(BertEmbeddings(V, H, 32), WrappedBertEncoder(**BODY),
                                         MLM(H, V))  # fmt: skip
    out = write_run_hf_dir(tmp_path / "hf", embedding, encoder, {"mlm": mlm}, tmp_path)
    config = json.loads((out / "config.json").read_text("utf-8"))
    assert config["architectures"] == ["BertForMaskedLM"] and config["num_hidden_layers"] == 2
    hf, info = transformers.BertForMaskedLM.from_pretrained(
        out, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf.eval()
    ids = torch.randint(1, V, (2, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = mlm.logits(encoder(embedding(ids)).last_hidden_state, embedding)
        assert (ours - hf(ids).logits).abs().max() <= 1e-4
    back = WrappedBertEncoder(**BODY)  # and HF's weights into it, every one
    report = from_hf_state_dict(hf.state_dict(), BertEmbeddings(V, H, 32), back, MLM(H, V))
    assert report == {"missing": [], "unexpected": []}
    for theirs, mine in zip(encoder.parameters(), back.parameters(), strict=True):
        assert torch.equal(theirs, mine)


def test_a_layout_without_hf_berts_sizes_is_refused_naming_them():
    with pytest.raises(ClozelabError, match=r"^encoder='SizelessEncoder': .*lacks the config"):
        hf_config_dict(BertEmbeddings(V, H), SizelessEncoder(**BODY))
