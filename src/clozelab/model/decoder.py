"""The decoder contract of the encoder-decoder models (DESIGN §3, extended for seq2seq).

A decoder reads the target prefix and the encoder output and returns one state per target
position; the seq2seq objective (``clozelab.objectives.seq2seq``) owns it, as ELECTRA's RTD owns
its generator, so the pre-training module stays ``corrupt -> embed -> encode -> objectives``:

    decoder(input_ids [B, L], embedding, memory [B, S, H], memory_mask [B, S],
            position_ids [B, L] | None, cache: DecoderCache | None) -> [B, L, H]
    decoder.output(hidden [N, H], embedding) -> (rows [N, H], table [V, H], bias [V] or None)
    decoder.logits(hidden [N, H], embedding) -> [N, V]   (rows @ table^T + bias)

The decoder embeds its input with the encoder embedding's ``word_embeddings`` (one shared table)
and its ``output``/``logits`` decode against the same table (tied), so callers gather the N rows
that carry a target before projecting to the vocabulary. Variants:
``clozelab.model.t5.T5Decoder`` (pre-LN
RMSNorm, relative position bias, no biases) and ``clozelab.model.bart.BartDecoder`` (post-LN,
learned positions with BART's offset of 2, GELU).

Incremental decoding (``clozelab.model.generate``): with a ``DecoderCache`` (``new_cache()``) the
decoder reads only the new target positions; each layer appends their self-attention keys/values
to the cached ones and projects the encoder output for cross-attention once, at the first call.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from clozelab.core.errors import config_error


class DecoderCache:
    """The keys/values of a decoder's layers during incremental decoding: per layer
    ``{"self": {"k", "v"}, "cross": {"k", "v"}}`` ([B, nh, S, hs] each), and ``length``, the
    target positions already read (the offset of the next call's positions)."""

    def __init__(self, num_layers: int) -> None:
        self.layers: list[dict] = [{"self": {}, "cross": {}} for _ in range(num_layers)]
        self.length = 0


class Decoder(nn.Module):
    """Base class of the decoders; subclasses set ``layout`` and implement the two methods.

    Attributes:
        layout: the HF model family the weights map onto ("t5", "bart"), for export/import.
        start: which token the target sequences start with at generation time: "pad" (T5)
            or "eos" (BART: ``</s>``, our ``[SEP]``), as the corruption's ``decoder_start``.
    """

    layout: ClassVar[str] = "decoder"
    start: ClassVar[str] = "pad"

    def forward(
        self,
        input_ids: Tensor,
        embedding: nn.Module,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def new_cache(self) -> DecoderCache:
        """An empty key/value cache for incremental decoding with this decoder."""
        return DecoderCache(len(self.layers))

    def output(self, hidden: Tensor, embedding: nn.Module) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(rows, table, bias)`` with logits = rows @ table^T + bias (``bias`` None: none), for
        hidden [N, H]: the pieces the chunked tied cross-entropy takes (``objectives.mlm``),
        never [N, V] at once."""
        raise NotImplementedError(f"{type(self).__name__} must implement output")

    def logits(self, hidden: Tensor, embedding: nn.Module) -> Tensor:
        """Vocabulary logits [N, V] of states [N, H] (generation, tests)."""
        rows, table, bias = self.output(hidden, embedding)
        return torch.nn.functional.linear(rows, table, bias)

    def word_table(self, embedding: nn.Module) -> Tensor:
        """The shared [V, H] word table, checked against this decoder's width."""
        weight = embedding.word_embeddings.weight
        if weight.shape[1] != self.hidden_size:
            raise config_error(
                "decoder.hidden_size",
                self.hidden_size,
                f"the shared word table is {weight.shape[1]} wide (factorized embeddings?)",
                "use an embedding of width model.hidden_size (embedding=t5|bart|bert)",
            )
        return weight


__all__ = ["Decoder", "DecoderCache"]
