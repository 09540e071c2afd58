"""Tiny random backbones and task files in the real formats, for the downstream tests."""

from __future__ import annotations

import pytest
from helpers import WORDS
from omegaconf import OmegaConf

TINY_ARCH = {
    "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
              "max_position_embeddings": 128, "type_vocab_size": 2, "vocab_size": None,
              "dropout": 0.0, "attention_dropout": 0.0, "activation": "gelu",
              "layer_norm_eps": 1e-12},
    "embedding": {"_target_": "clozelab.model.embeddings.BertEmbeddings",
                  "vocab_size": "${model.vocab_size}", "hidden_size": "${model.hidden_size}",
                  "max_position_embeddings": "${model.max_position_embeddings}",
                  "dropout": "${model.dropout}"},
    "encoder": {"_target_": "clozelab.model.encoder.TransformerEncoder",
                "hidden_size": "${model.hidden_size}", "num_layers": "${model.num_layers}",
                "num_heads": "${model.num_heads}",
                "intermediate_size": "${model.intermediate_size}",
                "dropout": "${model.dropout}", "attention_dropout": "${model.attention_dropout}"},
}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from clozelab.data.tokenizer import train_wordpiece

    text = [" ".join(WORDS)] * 3 + ["Paris London Obama Reuters said good bad movie ? ."] * 3
    tok = train_wordpiece(text, vocab_size=200, min_frequency=1)
    return tok.save(tmp_path_factory.mktemp("tok"))


@pytest.fixture
def tiny_backbone(tiny_tokenizer_dir):
    from clozelab.training.loading import load_backbone

    def make():
        arch = OmegaConf.create(TINY_ARCH)
        return load_backbone("none", arch=arch, tokenizer=str(tiny_tokenizer_dir))

    return make


@pytest.fixture
def tiny_arch():
    return OmegaConf.create(TINY_ARCH)
