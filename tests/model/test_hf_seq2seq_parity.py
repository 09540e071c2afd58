"""Parity with HF T5ForConditionalGeneration / BartForConditionalGeneration in both directions:
randomly initialised small HF configs, no missing/unexpected keys, logits within 1e-4."""

from __future__ import annotations

import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.model.hf_seq2seq import (
    components_from_hf_config,
    from_hf_state_dict,
    hf_config_dict,
    to_hf_state_dict,
)
from clozelab.model.seq2seq_layers import relative_position_bucket

transformers = pytest.importorskip("transformers")

V, H, TOL = 101, 32, 1e-4


def _t5_config(**overrides):
    kw = dict(vocab_size=V, d_model=H, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
              num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # fmt: skip
    kw.update(overrides)
    return transformers.T5Config(**kw)


def _bart_config(**overrides):
    kw = dict(vocab_size=V, d_model=H, encoder_layers=2, decoder_layers=1,
              encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=48,
              decoder_ffn_dim=40, max_position_embeddings=40, pad_token_id=1,
              bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)  # fmt: skip
    kw.update(overrides)
    return transformers.BartConfig(**kw)


HF_MODELS = {
    "t5": (_t5_config, "T5ForConditionalGeneration"),
    "t5_dkv": (lambda: _t5_config(d_kv=6), "T5ForConditionalGeneration"),
    "bart": (_bart_config, "BartForConditionalGeneration"),
}


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, V, (3, 17), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 11:] = 0  # padding on the encoder side
    attention_mask[2, 5:] = 0
    decoder_input_ids = torch.randint(3, V, (3, 9), generator=g)
    return input_ids, attention_mask, decoder_input_ids


def _ours_logits(embedding, encoder, decoder, batch):
    input_ids, attention_mask, decoder_input_ids = batch
    memory = encoder(embedding(input_ids), attention_mask).last_hidden_state
    hidden = decoder(decoder_input_ids, embedding, memory, attention_mask)
    return decoder.logits(hidden.reshape(-1, hidden.shape[-1]), embedding).view(
        *decoder_input_ids.shape, -1
    )


def _hf_logits(model, batch):
    input_ids, attention_mask, decoder_input_ids = batch
    with torch.no_grad():
        return model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids
        ).logits


@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_import_from_hf_matches_logits(name):
    make_config, arch = HF_MODELS[name]
    torch.manual_seed(0)
    model = getattr(transformers, arch)(make_config()).eval()
    if name == "bart":  # a non-zero final_logits_bias must travel too
        model.final_logits_bias.normal_()
    embedding, encoder, decoder = components_from_hf_config(model.config.to_dict())
    report = from_hf_state_dict(model.state_dict(), embedding, encoder, decoder)
    assert report == {"missing": [], "unexpected": []}
    for m in (embedding, encoder, decoder):
        m.eval()
    batch = _batch()
    with torch.no_grad():
        ours = _ours_logits(embedding, encoder, decoder, batch)
    theirs = _hf_logits(model, batch)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < TOL


@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_export_to_hf_loads_strictly_and_matches_logits(name):
    make_config, arch = HF_MODELS[name]
    torch.manual_seed(1)
    embedding, encoder, decoder = components_from_hf_config(make_config().to_dict())
    with torch.no_grad():  # move every weight away from its initial value (norms, biases too)
        for module in (embedding, encoder, decoder):
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    for m in (embedding, encoder, decoder):
        m.eval()
    config = hf_config_dict(embedding, encoder, decoder, pad_token_id=0, eos_token_id=2)
    config_cls = transformers.T5Config if config["model_type"] == "t5" else transformers.BartConfig
    model = getattr(transformers, arch)(config_cls(**config)).eval()
    result = model.load_state_dict(to_hf_state_dict(embedding, encoder, decoder), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    batch = _batch(1)
    with torch.no_grad():
        ours = _ours_logits(embedding, encoder, decoder, batch)
    assert (ours - _hf_logits(model, batch)).abs().max() < TOL


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bucket_equals_hf(bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-300, 300)[None, :] - torch.arange(0, 5)[:, None]
    for buckets, distance in ((32, 128), (8, 20)):
        ours = relative_position_bucket(relative, bidirectional, buckets, distance)
        theirs = T5Attention._relative_position_bucket(relative, bidirectional, buckets, distance)
        assert torch.equal(ours, theirs)


def test_gated_t5_and_untied_heads_are_refused():
    with pytest.raises(ClozelabError, match="gated"):
        components_from_hf_config(_t5_config(feed_forward_proj="gated-gelu").to_dict())
    model = transformers.T5ForConditionalGeneration(_t5_config())
    state = dict(model.state_dict())
    state["lm_head.weight"] = torch.randn_like(state["lm_head.weight"])
    embedding, encoder, decoder = components_from_hf_config(model.config.to_dict())
    with pytest.raises(ClozelabError, match="not tied"):
        from_hf_state_dict(state, embedding, encoder, decoder)


def test_bart_export_refuses_a_bert_layer_norm_epsilon():
    from clozelab.model.bart import BartDecoder, BartEmbeddings
    from clozelab.model.encoder import TransformerEncoder

    embedding = BartEmbeddings(V, H, 40)
    encoder = TransformerEncoder(H, 1, 4, 48, layer_norm_eps=1e-12)
    decoder = BartDecoder(H, 1, 4, 48, V)
    with pytest.raises(ClozelabError, match="1e-5"):
        hf_config_dict(embedding, encoder, decoder)
