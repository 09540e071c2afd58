"""The pre-trained body a downstream task fine-tunes: embedding + encoder (+ pooler, decoder) +
tokenizer. ``clozelab.training.loading.load_backbone`` builds it from a clozelab run, a checkpoint
inside one, an HF BERT or XLNet directory, or at random (``checkpoint=none``: the "why pre-train"
baseline)."""

from __future__ import annotations

import logging

from torch import Tensor, nn

from clozelab.data.tokenizer import Tokenizer
from clozelab.model.encoder import EncoderOutput
from clozelab.model.layer_pool import embed_texts
from clozelab.model.layers import Pooler

log = logging.getLogger(__name__)

NONE = ("none", "null", "random", "")


class Backbone(nn.Module):
    """``embedding -> encoder``; ``pooler`` is the pre-trained [CLS] pooler when there is one;
    ``decoder`` the pre-trained decoder of an encoder-decoder run (text-to-text tasks)."""

    def __init__(
        self,
        embedding: nn.Module,
        encoder: nn.Module,
        tokenizer: Tokenizer,
        pooler: Pooler | None = None,
        source: str = "none",
        decoder: nn.Module | None = None,
    ):
        super().__init__()
        self.embedding = embedding
        self.encoder = encoder
        self.pooler = pooler
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.source = source
        self.hidden_size = int(encoder.hidden_size)
        self.num_layers = int(encoder.num_layers)
        self.max_positions = int(getattr(embedding, "max_position_embeddings", 512))
        #: the token a sequence-level head reads by default (``cls``; XLNet: ``last``)
        self.summary_pooling = encoder.summary_pooling
        #: finds the pre-training run's entities in task text, for an encoder that takes
        #: ``entity_links`` (ERNIE-THU; ``clozelab.data.knowledge.EntityLinker``); else None
        self.linker = None

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        entity_links: Tensor | None = None,
    ) -> EncoderOutput:
        hidden = self.embedding(input_ids, token_type_ids)  # (B, T, H)
        extra = {}
        if token_type_ids is not None and "token_type_ids" in self.encoder.batch_inputs:
            extra["token_type_ids"] = token_type_ids  # relative segments (XLNet)
        if entity_links is not None and "entity_links" in self.encoder.batch_inputs:
            extra["entity_links"] = entity_links  # aligned entities (ERNIE-THU)
        return self.encoder(
            hidden, attention_mask, output_hidden_states=output_hidden_states, **extra
        )

    def embed(self, texts, layers=-1, pool: str = "mean", batch_size: int = 64):
        """Vectors of ``texts`` in one call (``model/layer_pool.embed_texts``): ``layers`` an
        index (-1: last layer) or a list averaged (``[-4, -3, -2, -1]``), ``pool`` mean | cls |
        none."""
        self.eval()

        def encode(input_ids, attention_mask, token_type_ids):
            return self(input_ids, attention_mask, token_type_ids, True).hidden_states

        return embed_texts(
            encode,
            self.tokenizer,
            texts,
            layers=layers,
            pool=pool,
            max_length=self.max_positions,
            batch_size=batch_size,
        )
