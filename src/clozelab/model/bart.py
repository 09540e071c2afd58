"""BART (Lewis et al. 2020), computation-exact with HF ``BartForConditionalGeneration``.

- ``LearnedPositions``: BART's learned absolute positions (the table has ``max + 2`` rows and
  position p reads row p + 2, fairseq's padding offset), added to the token vectors, then
  ``layernorm_embedding``.
- ``BartEmbeddings``: the encoder input: shared word table (times ``sqrt(H)`` with
  ``scale_embedding``), ``LearnedPositions``, dropout. No segment table: ``token_type_ids`` are
  ignored. The encoder itself is clozelab's post-LN ``TransformerEncoder`` (``encoder=post_ln``
  with LayerNorm epsilon 1e-5): BART's encoder layer is BERT's.
- ``BartDecoder``: its own ``LearnedPositions`` over the shared word table, post-LN blocks
  (causal self-attention, cross-attention, GELU feed-forward), and logits against the shared
  table plus ``final_logits_bias``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.decoder import Decoder, DecoderCache
from clozelab.model.dropout import Dropout
from clozelab.model.embeddings import Embedding
from clozelab.model.encoder import key_padding_mask
from clozelab.model.layers import init_bert_weights
from clozelab.model.lookup import Lookup
from clozelab.model.seq2seq_layers import Block

OFFSET = 2  # fairseq reserves the first two rows of BART's position tables


class LearnedPositions(nn.Module):
    """``LayerNorm(x + table[positions + 2])`` with a table of ``max_position_embeddings + 2``."""

    def __init__(self, max_position_embeddings: int, hidden_size: int, layer_norm_eps: float):
        super().__init__()
        self.max_position_embeddings = max_position_embeddings
        self.table = Lookup(max_position_embeddings + OFFSET, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x: Tensor, position_ids: Tensor | None = None) -> Tensor:
        T = x.shape[1]
        if self.max_position_embeddings < T:
            raise config_error(
                "data.max_seq_length",
                T,
                f"longer than model.max_position_embeddings={self.max_position_embeddings}",
                "lower data.max_seq_length or raise model.max_position_embeddings",
            )
        if position_ids is None:
            return self.norm(x + self.table.weight[OFFSET : OFFSET + T])
        return self.norm(x + self.table(position_ids + OFFSET))


class BartEmbeddings(Embedding):
    """BART's encoder input: Dropout(LayerNorm(word * scale + position)).

    Args:
        vocab_size: rows of the shared word table.
        hidden_size: width H.
        max_position_embeddings: the longest sequence (the table has 2 more rows).
        layer_norm_eps: LayerNorm epsilon (BART: 1e-5).
        dropout: dropout on the output.
        pad_token_id: its word vector starts at zero (as HF's padding_idx).
        initializer_range: std of the normal initialisation (BART: 0.02).
        scale_embedding: multiply the word vectors by sqrt(H) (BartConfig default: false).
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_position_embeddings: int = 1024,
        layer_norm_eps: float = 1e-5,
        dropout: float = 0.1,
        pad_token_id: int | None = 0,
        initializer_range: float = 0.02,
        scale_embedding: bool = False,
    ):
        super().__init__()
        self.vocab_size, self.hidden_size, self.pad_token_id = vocab_size, hidden_size, pad_token_id
        self.max_position_embeddings, self.layer_norm_eps = max_position_embeddings, layer_norm_eps
        self.scale_embedding = bool(scale_embedding)
        self.scale = math.sqrt(hidden_size) if scale_embedding else 1.0
        self.word_embeddings = Lookup(vocab_size, hidden_size, padding_idx=pad_token_id)
        self.positions = LearnedPositions(max_position_embeddings, hidden_size, layer_norm_eps)
        self.dropout = Dropout(dropout)
        init_bert_weights(self, std=initializer_range)
        if pad_token_id is not None:
            with torch.no_grad():
                self.word_embeddings.weight[pad_token_id].zero_()

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        role_ids: Tensor | None = None,
    ) -> Tensor:
        if role_ids is not None:
            raise config_error(
                "embedding",
                "bart",
                "the batch has role_ids but BART has no role table",
                "use embedding=role for dialogue batches",
            )
        x = self.word_embeddings(input_ids) * self.scale
        return self.dropout(self.positions(x, position_ids))  # (B, T, H)


class BartDecoder(Decoder):
    """BART's decoder (``Decoder`` contract).

    Args:
        hidden_size, num_layers, num_heads, intermediate_size: d_model, decoder_layers,
            decoder_attention_heads, decoder_ffn_dim.
        vocab_size: rows of the shared table (for ``final_logits_bias``).
        dropout / attention_dropout: BART's dropout / attention_dropout.
        activation: feed-forward activation (BART: gelu).
        layer_norm_eps: LayerNorm epsilon (1e-5).
        max_position_embeddings: the longest target (its table has 2 more rows).
        initializer_range: std of the normal initialisation (0.02).
        scale_embedding: multiply the word vectors by sqrt(H) (default false, as BartConfig).
    """

    layout = "bart"
    start = "eos"

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        vocab_size: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-5,
        max_position_embeddings: int = 1024,
        initializer_range: float = 0.02,
        scale_embedding: bool = False,
    ):
        super().__init__()
        if num_layers < 1:
            raise config_error("decoder.num_layers", num_layers, "must be at least 1", "set >= 1")
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.intermediate_size, self.activation = intermediate_size, activation
        self.dropout_prob, self.attention_dropout = dropout, attention_dropout
        self.layer_norm_eps, self.max_position_embeddings = layer_norm_eps, max_position_embeddings
        self.scale_embedding = bool(scale_embedding)
        self.scale = math.sqrt(hidden_size) if scale_embedding else 1.0
        self.positions = LearnedPositions(max_position_embeddings, hidden_size, layer_norm_eps)
        self.layers = nn.ModuleList(
            Block(
                hidden_size,
                num_heads,
                intermediate_size,
                dropout,
                attention_dropout,
                activation,
                norm="post",
                layer_norm_eps=layer_norm_eps,
                cross=True,
            )
            for _ in range(num_layers)
        )
        self.dropout = Dropout(dropout)
        init_bert_weights(self, std=initializer_range)
        self.final_logits_bias = nn.Parameter(torch.zeros(vocab_size))  # (V,)

    def forward(
        self,
        input_ids: Tensor,
        embedding: nn.Module,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """[B, L] target prefix -> [B, L, H]; ``position_ids`` [B, L] default 0..L-1 (with
        ``cache``: the L positions after the ``cache.length`` ones it holds)."""
        x = nn.functional.embedding(input_ids, self.word_table(embedding)) * self.scale
        L = input_ids.shape[1]
        if cache is not None and position_ids is None and cache.length:
            position_ids = torch.arange(cache.length, cache.length + L, device=x.device)[None]
        x = self.dropout(self.positions(x, position_ids))
        cross = key_padding_mask(memory_mask)  # (B, 1, 1, S) bool or None
        for i, layer in enumerate(self.layers):
            x = layer(x, None, memory, cross, causal=True, cache=cache.layers[i] if cache else None)
        if cache is not None:
            cache.length += L
        return x  # (B, L, H)

    def output(self, hidden: Tensor, embedding: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        return hidden, self.word_table(embedding), self.final_logits_bias


__all__ = ["BartDecoder", "BartEmbeddings", "LearnedPositions"]
