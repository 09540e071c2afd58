"""Encoder variants the seed systems change (DESIGN §3).

- ``TransformerStack``: the BERT layer stack with three switches:
  ``norm="pre"`` (pre-LN: x + Drop(Attn(LN(x))), a final LayerNorm; Xiong et al. 2020),
  ``share_layers`` (ALBERT's cross-layer parameter sharing: one layer applied ``num_layers``
  times; Lan et al. 2020) and ``causal`` (left-to-right attention, the GPT-style baseline;
  Radford et al. 2018). With every switch off it computes what ``TransformerEncoder`` computes;
  it is a separate class so HF BERT export never mistakes it for one.
- ``BiLSTMEncoder``: ELMo's biLM body (Peters et al. 2018): a forward and a backward LSTM stack,
  independent of each other, residual connections between layers. ``last_hidden_state`` is
  ``[forward; backward]`` ([B, T, H], each direction H/2), so the forward half at t has read tokens
  <= t and the backward half tokens >= t.

Shape legend: B batch, T sequence length, H hidden size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.attention import check_backend
from clozelab.model.dropout import Dropout
from clozelab.model.encoder import (
    Encoder,
    EncoderOutput,
    TransformerLayer,
    key_padding_mask,
    run_layers,
)
from clozelab.model.layers import canonical_activation, init_bert_weights
from clozelab.model.unpad import Packing, check_unpad_attention

NORMS = ("post", "pre")


class PreLNTransformerLayer(TransformerLayer):
    """One pre-LN layer: a = x + Drop(Attn(LN(x))); y = a + Drop(FFN(LN(a))). Same parameters as
    the post-LN layer; only where the LayerNorms sit differs."""

    def forward(self, x: Tensor, mask: Tensor | None = None, packing: Packing | None = None):
        x = self.dropout.add(x, self.attention(self.attention_norm(x), mask, packing))  # (B, T, H)
        return self.dropout.add(x, self.feed_forward(self.output_norm(x)))  # (B, T, H)


def causal_mask(attention_mask: Tensor | None, length: int, device) -> Tensor:
    """Boolean [B or 1, 1, T, T] mask: query t attends to keys <= t that are not padding."""
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
    padding = key_padding_mask(attention_mask)  # (B, 1, 1, T) or None
    if padding is not None:
        allowed = allowed & padding
        # a padding query whose keys are all masked would average; keep its own position
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=device)
    return allowed


class TransformerStack(Encoder):
    """A Transformer encoder with the pre-LN / shared-layers / causal switches.

    Args:
        hidden_size, num_layers, num_heads, intermediate_size, dropout, attention_dropout,
        activation, layer_norm_eps, initializer_range: as ``TransformerEncoder``.
        norm: ``post`` (BERT) or ``pre`` (pre-LN, with a final LayerNorm).
        share_layers: one set of layer weights applied ``num_layers`` times (ALBERT).
        causal: each position attends only to itself and earlier positions (GPT).
        attention_backend, unpad, unpad_attention: as ``TransformerEncoder`` (the causal
            encoder unpads with ``unpad_attention="padded"`` only).
    """

    @classmethod
    def context_for(cls, node) -> str:
        return "causal" if node.get("causal") else "bidirectional"

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        norm: str = "pre",
        share_layers: bool = False,
        causal: bool = False,
        attention_backend: str = "auto",
        unpad: bool = False,
        unpad_attention: str = "padded",
    ):
        super().__init__()
        if norm not in NORMS:
            raise config_error("encoder.norm", norm, "unknown LayerNorm placement", f"use {NORMS}")
        if num_heads < 1 or hidden_size % num_heads:
            raise config_error(
                "model.hidden_size / model.num_heads",
                f"{hidden_size} / {num_heads}",
                "the hidden size must be a multiple of the number of heads",
                "choose model.num_heads dividing model.hidden_size",
            )
        if num_layers < 1:
            raise config_error("model.num_layers", num_layers, "must be at least 1", "set >= 1")
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.intermediate_size = intermediate_size
        self.activation = canonical_activation(activation)
        self.norm, self.share_layers, self.causal = norm, share_layers, causal
        self.attention_dropout = attention_dropout
        self.attention_backend = check_backend(attention_backend)
        self.unpad = bool(unpad)
        self.unpad_attention = check_unpad_attention(unpad_attention, causal=causal)
        layer_class = PreLNTransformerLayer if norm == "pre" else TransformerLayer
        n_distinct = 1 if share_layers else num_layers
        self.layers = nn.ModuleList(
            layer_class(
                hidden_size,
                num_heads,
                intermediate_size,
                dropout,
                attention_dropout,
                self.activation,
                layer_norm_eps,
                self.attention_backend,
            )
            for _ in range(n_distinct)
        )
        self.final_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps) if norm == "pre" else None
        init_bert_weights(self, std=initializer_range)

    def forward(
        self,
        hidden: Tensor,
        attention_mask: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Encode ``hidden`` [B, T, H]; ``attention_mask`` [B, T] is 1 for tokens, 0 for padding."""
        if self.causal:
            mask = causal_mask(attention_mask, hidden.shape[1], hidden.device)
        else:
            mask = key_padding_mask(attention_mask)
        layers = [self.layers[0 if self.share_layers else i] for i in range(self.num_layers)]
        return run_layers(
            self, layers, hidden, attention_mask, mask, output_hidden_states, self.final_norm
        )


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each row's first ``lengths[b]`` positions of ``x`` [B, T, ...]; padding stays put."""
    width = x.shape[1]
    t = torch.arange(width, device=x.device)[None]  # (1, T)
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T)
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


class BiLSTMEncoder(Encoder):
    """ELMo-style biLM body: separate forward and backward LSTM stacks, residual after layer 1.

    Args:
        hidden_size: width H of the input and of the output ([forward; backward], H/2 each).
        num_layers: LSTM layers per direction (ELMo: 2).
        dropout: dropout between layers and on the output.
        initializer_range: unused by the LSTMs (PyTorch's uniform init); kept for a uniform
            config interface.
    """

    causal = False

    @classmethod
    def context_for(cls, node) -> str:
        return "split_directions"

    def __init__(
        self,
        hidden_size: int,
        num_layers: int = 2,
        dropout: float = 0.1,
        initializer_range: float = 0.02,
    ):
        super().__init__()
        if hidden_size % 2 or hidden_size < 2:
            raise config_error(
                "model.hidden_size",
                hidden_size,
                "the BiLSTM splits H into two directions",
                "use an even model.hidden_size",
            )
        if num_layers < 1:
            raise config_error("model.num_layers", num_layers, "must be at least 1", "set >= 1")
        self.hidden_size, self.num_layers = hidden_size, num_layers
        half = hidden_size // 2
        self.forward_layers = nn.ModuleList(
            nn.LSTM(hidden_size if i == 0 else half, half, batch_first=True)
            for i in range(num_layers)
        )
        self.backward_layers = nn.ModuleList(
            nn.LSTM(hidden_size if i == 0 else half, half, batch_first=True)
            for i in range(num_layers)
        )
        self.dropout = Dropout(dropout)

    def _direction(self, layers: nn.ModuleList, x: Tensor) -> list[Tensor]:
        outputs = []
        for i, lstm in enumerate(layers):
            y, _ = lstm(x)  # (B, T, H/2)
            if i > 0:
                y = y + x  # residual between LSTM layers (ELMo)
            outputs.append(y)
            x = self.dropout(y)
        return outputs

    def forward(
        self,
        hidden: Tensor,
        attention_mask: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        batch, width = hidden.shape[:2]
        if attention_mask is None:
            lengths = torch.full((batch,), width, device=hidden.device)
        else:
            lengths = attention_mask.long().sum(-1)  # right padding: real tokens come first
        forward = self._direction(self.forward_layers, hidden)
        backward = self._direction(self.backward_layers, reverse_padded(hidden, lengths))
        layers = [
            torch.cat([f, reverse_padded(b, lengths)], dim=-1) for f, b in zip(forward, backward)
        ]
        states = tuple([hidden, *layers]) if output_hidden_states else ()
        return EncoderOutput(last_hidden_state=layers[-1], hidden_states=states)
