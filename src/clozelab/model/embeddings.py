"""BERT input embeddings: learned word, position and segment tables (SPECS §15).

``output = Dropout(LayerNorm(word[input_ids] + position[position_ids] + segment[token_type_ids]))``,
HF ``BertEmbeddings`` compatible (``clozelab.model.hf`` maps the weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.dropout import Dropout
from clozelab.model.layers import init_bert_weights
from clozelab.model.lookup import Lookup


@dataclass
class HFEmbeddingLayout:
    """How an embedding maps onto an HF BERT-family model's embeddings (``Embedding.hf_layout``).

    Attributes:
        model_type: the HF family whose embeddings hold these tables: ``bert`` or ``ernie``
            (``ErnieEmbeddings``: BERT's plus ``task_type_embeddings``); it names the key prefix
            (``bert.`` / ``ernie.``) and the architectures (``BertForPreTraining``, ...).
        tables: HF ``embeddings.*`` key -> our tensor (the tensor itself, so that reading it
            exports and copying into it imports).
        config: the ``config.json`` entries the embedding decides (sizes, ``pad_token_id``, the
            family's own switches such as ``use_task_id``).
    """

    model_type: str
    tables: dict[str, Tensor]
    config: dict[str, Any] = field(default_factory=dict)


def bert_tables(embedding: nn.Module) -> dict[str, Tensor]:
    """HF ``BertEmbeddings`` keys of the word, position and segment tables and the LayerNorm of
    ``embedding`` (which names them as ``BertEmbeddings`` does)."""
    return {
        "embeddings.word_embeddings.weight": embedding.word_embeddings.weight,
        "embeddings.position_embeddings.weight": embedding.position_embeddings.weight,
        "embeddings.token_type_embeddings.weight": embedding.token_type_embeddings.weight,
        "embeddings.LayerNorm.weight": embedding.norm.weight,
        "embeddings.LayerNorm.bias": embedding.norm.bias,
    }


def bert_config(embedding: nn.Module) -> dict[str, Any]:
    """The ``config.json`` sizes of ``embedding``'s BERT tables."""
    return {
        "vocab_size": embedding.word_embeddings.num_embeddings,
        "max_position_embeddings": embedding.position_embeddings.num_embeddings,
        "type_vocab_size": embedding.token_type_embeddings.num_embeddings,
        "pad_token_id": embedding.pad_token_id,
    }


class Embedding(nn.Module):
    """Base of the input embeddings (DESIGN §3).

    Contract: ``forward(input_ids, token_type_ids=None, position_ids=None, role_ids=None)`` returns
    ``[B, T, H]``; ``word_embeddings`` is the table a decoder ties to.

    Extension point: ``bind_tokenizer(tokenizer)`` is called once with the run's tokenizer after
    the embedding is built (``build_components``, a randomly initialised fine-tuning body). The
    default does nothing; an embedding that reads the token strings (the character CNN) fills
    its tables there. ``batch_inputs``: the further batch keys ``forward`` takes as keyword
    arguments when a batch has them (``task_ids`` for ERNIE 2.0's task embeddings).
    """

    batch_inputs: ClassVar[tuple[str, ...]] = ()
    #: Why ``clozelab export`` cannot write a run with this embedding as an HF model, and what
    #: the user can do instead: ``(reason, fix)`` for the refusal's message; None: the generic
    #: refusal of embeddings HF BERT's weights do not map onto.
    hf_export_refusal: ClassVar[tuple[str, str] | None] = None

    def hf_layout(self) -> HFEmbeddingLayout | None:
        """This embedding as the embeddings of an HF BERT-family model (``clozelab export``,
        ``model.init_from`` / ``clozelab.load`` of an HF directory), or None: HF has no
        embeddings these weights map onto (the export is refused; ``hf_export_refusal`` says
        why). The default is None."""
        return None

    def bind_tokenizer(self, tokenizer) -> None:
        """Read what the embedding needs from ``tokenizer`` (a clozelab ``Tokenizer``)."""

    def check_inputs(self, input_ids: Tensor, **inputs: Tensor) -> None:
        """Refuse, with a ClozelabError naming the argument, its value and the fix, further
        inputs (keys of ``batch_inputs``) a caller gives for ``input_ids`` [B, T] that this
        embedding cannot take (ERNIE 2.0's task ids: a shape or a task id outside the table).
        ``clozelab.load``'s model asks before embedding a user's call; pre-training batches are
        built to fit. Nothing by default."""


class BertEmbeddings(Embedding):
    """Word + learned absolute position + token type (segment) embeddings, then LN and dropout.

    Args:
        vocab_size: rows of the word table (tied to the MLM decoder through ``word_embeddings``).
        hidden_size: width H of every embedding.
        max_position_embeddings: rows of the position table; the longest sequence accepted.
        type_vocab_size: rows of the segment table (2 for sentence A / B).
        layer_norm_eps: LayerNorm epsilon (BERT: 1e-12).
        dropout: dropout on the output.
        pad_token_id: id of [PAD]; its word vector starts at zero and gets no input gradient.
        initializer_range: std of the normal initialisation (BERT: 0.02).
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.1,
        pad_token_id: int | None = 0,
        initializer_range: float = 0.02,
    ):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise config_error("model.dropout", dropout, "must be in [0, 1)", "use 0.1")
        if pad_token_id is not None and not 0 <= pad_token_id < vocab_size:
            raise config_error(
                "model.pad_token_id",
                pad_token_id,
                f"outside the vocabulary of {vocab_size} ids",
                "use the tokenizer's pad_token_id",
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.pad_token_id = pad_token_id
        self.dropout_prob = dropout
        self.word_embeddings = Lookup(vocab_size, hidden_size, padding_idx=pad_token_id)
        self.position_embeddings = Lookup(max_position_embeddings, hidden_size)
        self.token_type_embeddings = Lookup(type_vocab_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = Dropout(dropout)
        init_bert_weights(self, std=initializer_range)
        if pad_token_id is not None:
            with torch.no_grad():
                self.word_embeddings.weight[pad_token_id].zero_()

    def hf_layout(self) -> HFEmbeddingLayout:
        """HF ``BertEmbeddings``: the same tables under their HF names."""
        return HFEmbeddingLayout("bert", bert_tables(self), bert_config(self))

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        role_ids: Tensor | None = None,
    ) -> Tensor:
        """Embed ``input_ids`` [B, T] into [B, T, H].

        ``token_type_ids`` defaults to all zeros (segment A); ``position_ids`` ([B, T] or [T])
        defaults to 0..T-1. ``role_ids`` belong to the role (dialogue) embedding and are refused.
        """
        if role_ids is not None:
            raise config_error(
                "embedding",
                type(self).__name__,
                "the batch has role_ids but the BERT embedding has no role table",
                "use the role/dialogue embedding (ERNIE DLM) or drop role_ids from the batch",
            )
        seq_len = input_ids.shape[-1]
        if seq_len > self.max_position_embeddings:
            raise config_error(
                "data.max_seq_length",
                seq_len,
                f"longer than model.max_position_embeddings={self.max_position_embeddings}",
                "lower data.max_seq_length or raise model.max_position_embeddings",
            )
        x = self.word_embeddings(input_ids)  # (B, T, H)
        if position_ids is None:
            x = x + self.position_embeddings.weight[:seq_len]  # (T, H) broadcast over B
        else:
            x = x + self.position_embeddings(position_ids)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]  # (H,) broadcast
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(x))  # (B, T, H)
