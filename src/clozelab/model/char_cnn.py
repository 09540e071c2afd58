"""ELMo's context-independent token encoder (Peters et al. 2018, §3.4; Jozefowicz et al. 2016):
characters -> embeddings -> 1-D convolutions max-pooled over the characters -> highway layers ->
a linear projection. No position and no segment embeddings: the LSTMs above read the order.

Each vocabulary id is spelled once (``bind_tokenizer``) into a row of character ids, kept in the
state dict (``token_chars``) so a loaded checkpoint needs no tokenizer. Characters are the UTF-8
bytes of the token (a WordPiece continuation ``##ing`` is spelled ``ing`` without the beginning-of-
word mark, so the CNN sees where a word starts), framed as ELMo does: ``<bow> bytes <eow>``,
padded, at most ``max_characters`` (ELMo: 50).

``word_embeddings`` is a separate output table (ELMo's softmax weights): the LM decoder ties to it;
the input side never reads it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.dropout import Dropout
from clozelab.model.embeddings import Embedding
from clozelab.model.layers import init_bert_weights
from clozelab.model.lookup import Lookup

PAD_CHAR, BOW, EOW, BOC = 0, 1, 2, 3  # padding, begin of word, end of token, begin of a ##piece
N_CHARS = 256 + 4  # bytes are shifted by 4
ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh}


def spell(token: str, max_characters: int) -> list[int]:
    """Character ids of one token: ``[BOW|BOC] utf-8 bytes + 4 [EOW]``, padded to the width."""
    start = BOW
    if token.startswith("##") and len(token) > 2:
        token, start = token[2:], BOC
    body = [b + 4 for b in token.encode("utf-8")][: max_characters - 2]
    ids = [start, *body, EOW]
    return ids + [PAD_CHAR] * (max_characters - len(ids))


class Highway(nn.Module):
    """``y = g * x + (1 - g) * f(W_h x + b_h)``, ``g = sigmoid(W_g x + b_g)`` per layer
    (Srivastava et al. 2015, as ELMo's AllenNLP implementation: the gate carries the input, its
    bias starts at 1 so a fresh layer mostly passes its input through)."""

    def __init__(self, size: int, num_layers: int, activation: str = "relu"):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(size, 2 * size) for _ in range(num_layers))
        self.activation = ACTIVATIONS[activation]
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=(1.0 / size) ** 0.5)
            nn.init.zeros_(layer.bias[:size])
            nn.init.ones_(layer.bias[size:])  # the gate

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            transform, gate = layer(x).chunk(2, dim=-1)
            g = torch.sigmoid(gate)
            x = g * x + (1 - g) * self.activation(transform)
        return x


class CharCNNEmbeddings(Embedding):
    """Character-CNN token encoder with highway layers and a projection to H.

    Args:
        vocab_size: token ids (rows of ``token_chars`` and of the output table).
        hidden_size: width H of the output (ELMo projects 2048 -> 512).
        char_embedding_size: width of a character vector (ELMo: 16).
        filters: ``[[width, channels], ...]`` of the convolutions (ELMo: [[1, 32], [2, 32],
            [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]).
        num_highway: highway layers (ELMo: 2).
        max_characters: characters per token, with the two marks (ELMo: 50).
        activation: of the convolutions and highway transforms (ELMo: relu).
        dropout: dropout on the output.
        pad_token_id: [PAD] gets a zero vector.
        initializer_range: std of the character table and the projection.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        char_embedding_size: int = 16,
        filters=((1, 32), (2, 32), (3, 64), (4, 128), (5, 256)),
        num_highway: int = 2,
        max_characters: int = 50,
        activation: str = "relu",
        dropout: float = 0.1,
        pad_token_id: int | None = 0,
        initializer_range: float = 0.02,
    ):
        super().__init__()
        filters = [(int(w), int(c)) for w, c in filters]
        if not filters or any(w < 1 or c < 1 for w, c in filters):
            raise config_error(
                "embedding.filters",
                filters,
                "needs [width, channels] pairs, each >= 1",
                "e.g. [[1, 32], [2, 32], [3, 64]]",
            )
        widest = max(w for w, _ in filters)
        if max_characters < max(widest, 3):
            raise config_error(
                "embedding.max_characters",
                max_characters,
                f"must hold the widest filter ({widest}) and the two word marks",
                f"set it to at least {max(widest, 3)} (ELMo: 50)",
            )
        if activation not in ACTIVATIONS:
            raise config_error(
                "embedding.activation", activation, "unknown", f"use one of {list(ACTIVATIONS)}"
            )
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.max_characters, self.pad_token_id = max_characters, pad_token_id
        self.register_buffer(
            "token_chars", torch.zeros(vocab_size, max_characters, dtype=torch.long)
        )
        self.char_embeddings = Lookup(N_CHARS, char_embedding_size, padding_idx=PAD_CHAR)
        self.convolutions = nn.ModuleList(
            nn.Conv1d(char_embedding_size, channels, width) for width, channels in filters
        )
        self.activation = ACTIVATIONS[activation]
        n_filters = sum(c for _, c in filters)
        self.highway = Highway(n_filters, num_highway, activation)
        self.projection = nn.Linear(n_filters, hidden_size)
        self.word_embeddings = Lookup(vocab_size, hidden_size)  # the LM softmax (output)
        self.dropout = Dropout(dropout)
        init_bert_weights(self.char_embeddings, std=initializer_range)
        init_bert_weights(self.projection, std=initializer_range)
        init_bert_weights(self.word_embeddings, std=initializer_range)
        with torch.no_grad():
            self.char_embeddings.weight[PAD_CHAR].zero_()

    def bind_tokenizer(self, tokenizer) -> None:
        """Spell every vocabulary id (ids past the tokenizer's, e.g. sentinels: ``<extra_i>``)."""
        vocab = {i: t for t, i in tokenizer.hf.get_vocab().items()}
        rows = [
            spell(vocab.get(i, f"<extra_{i}>"), self.max_characters) for i in range(self.vocab_size)
        ]
        self.token_chars.copy_(torch.tensor(rows, dtype=torch.long))

    def token_vectors(self, ids: Tensor) -> Tensor:
        """The CNN + highway + projection of token ids ``[N]`` -> ``[N, H]``."""
        chars = self.char_embeddings(self.token_chars[ids]).transpose(1, 2)  # (N, C_emb, chars)
        pooled = [self.activation(conv(chars).max(dim=-1).values) for conv in self.convolutions]
        return self.projection(self.highway(torch.cat(pooled, dim=-1)))  # (N, H)

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        role_ids: Tensor | None = None,
    ) -> Tensor:
        """``[B, T] -> [B, T, H]``; each distinct id of the batch goes through the CNN once.
        Segments, positions and roles are not embedded (ELMo's LSTMs take none)."""
        unique, inverse = torch.unique(input_ids, return_inverse=True)
        vectors = self.token_vectors(unique)
        if self.pad_token_id is not None:
            vectors = vectors.masked_fill((unique == self.pad_token_id)[:, None], 0.0)
        return self.dropout(vectors[inverse])  # (B, T, H)


class WordEmbeddings(Embedding):
    """A word table only, then dropout: no position or segment embeddings (an LSTM reads the
    order). The word-embedding variant of the ELMo baseline."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        dropout: float = 0.1,
        pad_token_id: int | None = 0,
        initializer_range: float = 0.02,
    ):
        super().__init__()
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.word_embeddings = Lookup(vocab_size, hidden_size, padding_idx=pad_token_id)
        init_bert_weights(self, std=initializer_range)
        if pad_token_id is not None:
            with torch.no_grad():
                self.word_embeddings.weight[pad_token_id].zero_()
        self.dropout = Dropout(dropout)

    def forward(self, input_ids, token_type_ids=None, position_ids=None, role_ids=None) -> Tensor:
        return self.dropout(self.word_embeddings(input_ids))  # (B, T, H)
