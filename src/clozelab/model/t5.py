"""T5 (Raffel et al. 2020), computation-exact with HF ``T5ForConditionalGeneration`` (v1.0 layout).

- ``T5Embeddings``: the shared word table and dropout; no absolute positions, no segments
  (``token_type_ids`` are ignored: T5 has no segment table).
- ``T5Encoder``: pre-LN blocks with RMSNorm and no biases, unscaled attention scores plus the
  bidirectional relative position bias of the first layer (shared by all layers), a final RMSNorm
  and dropout.
- ``T5Decoder``: the same with causal self-attention (unidirectional position bias) and
  cross-attention to the encoder output; logits = (h * H^-0.5) @ shared^T (tied, no bias).
- ``init_t5_weights``: T5's initialisation (Mesh TensorFlow / HF ``T5PreTrainedModel``), which
  stands in for the missing 1/sqrt(hs) of the attention scores.
"""

from __future__ import annotations

from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.decoder import Decoder, DecoderCache
from clozelab.model.dropout import Dropout
from clozelab.model.embeddings import Embedding
from clozelab.model.encoder import Encoder, EncoderOutput, FeedForward, key_padding_mask
from clozelab.model.lookup import Lookup
from clozelab.model.seq2seq_layers import (
    Attention,
    Block,
    RelativePositionBias,
    RMSNorm,
    additive_mask,
)


def init_t5_weights(module: nn.Module, hidden_size: int, factor: float = 1.0) -> nn.Module:
    """HF ``T5PreTrainedModel._init_weights``: q ~ N(0, (H hs)^-1/2), k, v ~ N(0, H^-1/2),
    o ~ N(0, (nh hs)^-1/2), wi ~ N(0, H^-1/2), wo ~ N(0, I^-1/2), position bias ~ N(0, H^-1/2),
    word table ~ N(0, 1), norms 1 (each std times ``factor``)."""
    for m in module.modules():
        if isinstance(m, Attention):
            inner = m.num_heads * m.head_size
            rows = (
                [m.qkv.weight[:inner], m.qkv.weight[inner:]]
                if not m.cross
                else [m.q.weight, m.kv.weight]
            )
            nn.init.normal_(rows[0], std=factor * (hidden_size * m.head_size) ** -0.5)
            nn.init.normal_(rows[1], std=factor * hidden_size**-0.5)
            nn.init.normal_(m.out.weight, std=factor * inner**-0.5)
        elif isinstance(m, RelativePositionBias):
            nn.init.normal_(m.embedding.weight, std=factor * hidden_size**-0.5)
        elif isinstance(m, RMSNorm):
            nn.init.ones_(m.weight)
        elif isinstance(m, FeedForward):
            nn.init.normal_(m.fc1.weight, std=factor * hidden_size**-0.5)
            nn.init.normal_(m.fc2.weight, std=factor * m.fc2.weight.shape[1] ** -0.5)
    return module


class T5Embeddings(Embedding):
    """The shared word table, then dropout (T5 adds no positions: they live in the attention).

    Args:
        vocab_size: rows of the table (tokenizer vocabulary + sentinels).
        hidden_size: width H.
        dropout: dropout on the output.
        pad_token_id: accepted for a uniform config; T5's pad row is trained like any other.
        initializer_factor: T5's init factor (the table ~ N(0, factor)).
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        dropout: float = 0.1,
        pad_token_id: int | None = 0,
        initializer_factor: float = 1.0,
    ):
        super().__init__()
        self.vocab_size, self.hidden_size, self.pad_token_id = vocab_size, hidden_size, pad_token_id
        self.word_embeddings = Lookup(vocab_size, hidden_size)
        nn.init.normal_(self.word_embeddings.weight, std=initializer_factor)
        self.dropout = Dropout(dropout)

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
                "t5",
                "the batch has role_ids but T5 has no role table",
                "use embedding=role for dialogue batches",
            )
        return self.dropout(self.word_embeddings(input_ids))  # (B, T, H)


class _T5Stack(nn.Module):
    """Layers, position bias and final norm shared by the T5 encoder and decoder (``cross``: the
    decoder's layers also attend to the encoder output; its position bias is one-directional)."""

    cross: bool = False

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation: str = "relu",
        layer_norm_eps: float = 1e-6,
        relative_attention_num_buckets: int = 32,
        relative_attention_max_distance: int = 128,
        head_size: int | None = None,
        initializer_factor: float = 1.0,
    ):
        super().__init__()
        cross = self.cross
        if num_layers < 1:
            raise config_error("model.num_layers", num_layers, "must be at least 1", "set >= 1")
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.intermediate_size, self.activation = intermediate_size, activation
        self.dropout_prob, self.attention_dropout = dropout, attention_dropout
        self.layer_norm_eps, self.head_size = layer_norm_eps, head_size
        self.position_bias = RelativePositionBias(
            num_heads, not cross, relative_attention_num_buckets, relative_attention_max_distance
        )
        self.layers = nn.ModuleList(
            Block(
                hidden_size,
                num_heads,
                intermediate_size,
                dropout,
                attention_dropout,
                activation,
                norm="pre",
                rms=True,
                layer_norm_eps=layer_norm_eps,
                bias=False,
                scale=1.0,
                cross=cross,
                head_size=head_size,
                activation_dropout=dropout,
            )
            for _ in range(num_layers)
        )
        self.final_norm = RMSNorm(hidden_size, layer_norm_eps)
        self.dropout = Dropout(dropout)
        init_t5_weights(self, hidden_size, initializer_factor)

    @property
    def num_buckets(self) -> int:
        return self.position_bias.num_buckets

    @property
    def max_distance(self) -> int:
        return self.position_bias.max_distance


class T5Encoder(_T5Stack, Encoder):
    """T5's encoder stack: ``encoder(hidden, attention_mask) -> EncoderOutput``.

    Args:
        hidden_size: d_model. num_layers, num_heads: as named. intermediate_size: d_ff.
        dropout: T5's dropout_rate (after every sub-block, on the embeddings and the output).
        attention_dropout: dropout on the attention probabilities (T5: dropout_rate).
        activation: feed-forward activation (T5 v1.0: relu).
        layer_norm_eps: RMSNorm epsilon (1e-6).
        relative_attention_num_buckets / relative_attention_max_distance: 32 / 128.
        head_size: d_kv when num_heads * d_kv != d_model (default d_model // num_heads).
        initializer_factor: T5's init factor.
    """

    cross = False

    def forward(
        self,
        hidden: Tensor,
        attention_mask: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        T = hidden.shape[1]
        mask = additive_mask(self.position_bias(T, T).to(hidden.dtype), attention_mask, False)
        states = [hidden] if output_hidden_states else []
        x = hidden
        for layer in self.layers:
            x = layer(x, mask)
            if output_hidden_states:
                states.append(x)
        x = self.dropout(self.final_norm(x))
        if output_hidden_states:
            states[-1] = x
        return EncoderOutput(last_hidden_state=x, hidden_states=tuple(states))


class T5Decoder(_T5Stack, Decoder):
    """T5's decoder stack with the tied, H^-1/2-scaled output projection (``Decoder`` contract).

    Arguments as ``T5Encoder``.
    """

    layout = "t5"
    start = "pad"

    cross = True

    def forward(
        self,
        input_ids: Tensor,
        embedding: nn.Module,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """[B, L] target prefix -> [B, L, H]. ``position_ids`` [B, L] (e.g. MASS: the fragment's
        positions in the sentence) give the relative distances; default 0..L-1. With ``cache``
        the L positions follow the ``cache.length`` ones it holds (position ids: default only)."""
        x = self.dropout(nn.functional.embedding(input_ids, self.word_table(embedding)))
        L = input_ids.shape[1]
        past = cache.length if cache is not None else 0
        if position_ids is None:
            bias = self.position_bias(L, past + L, offset=past)  # (1, nh, L, past + L)
        else:
            bias = self.position_bias.between(position_ids, position_ids)  # (B, nh, L, L)
        mask = additive_mask(bias.to(x.dtype), None, causal=True)
        cross = key_padding_mask(memory_mask)  # (B, 1, 1, S) bool or None
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, memory, cross, cache=cache.layers[i] if cache else None)
        if cache is not None:
            cache.length += L
        return self.dropout(self.final_norm(x))  # (B, L, H)

    def output(self, hidden: Tensor, embedding: nn.Module) -> tuple[Tensor, Tensor, None]:
        return hidden * self.hidden_size**-0.5, self.word_table(embedding), None  # no bias


__all__ = ["T5Decoder", "T5Embeddings", "T5Encoder", "init_t5_weights"]
