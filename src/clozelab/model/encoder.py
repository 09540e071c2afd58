"""Post-LN Transformer encoder, computation-exact with BERT (SPECS §15).

One class per concept: ``SelfAttention`` (fused QKV projection + SDPA + output projection),
``FeedForward`` (dense -> activation -> dense), ``TransformerLayer`` (the two sub-blocks, each
wrapped in dropout, residual and LayerNorm) and ``TransformerEncoder`` (the stack).

The query, key and value projections live in one ``Linear(H, 3H)`` whose output rows are the
query, key and value blocks in that order; ``clozelab.model.hf`` splits and concatenates it when
exchanging weights with HF ``BertModel``. Heads are contiguous column blocks of each projection,
exactly as in BERT, so a checkpoint maps one to one.

Attention goes through ``F.scaled_dot_product_attention``, unmasked when the batch has no
padding. One exception, for speed: training with attention dropout on CPU, where SDPA would fall
back to its plain-math path with a slow dropout, computes the same math itself with the fast
dropout of ``clozelab.model.layers`` (only with ``attention_backend="auto"`` and outside
``torch.compile``). ``attention_backend`` restricts SDPA to one kernel
(``clozelab.model.attention``); ``unpad`` runs the dense parts of every layer on the real tokens
of a padded batch only (``clozelab.model.unpad``).

Shape legend: B batch, T sequence length, H hidden size, nh heads, hs head size (H // nh),
I intermediate size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.attention import attention_context, check_backend
from clozelab.model.compile import layer_targets
from clozelab.model.dropout import Dropout, dropout
from clozelab.model.layers import (
    HF_ACTIVATION_NAMES,
    canonical_activation,
    get_activation,
    init_bert_weights,
)
from clozelab.model.unpad import Packing, check_unpad_attention


@dataclass
class EncoderOutput:
    """What every encoder returns.

    ``last_hidden_state`` is [B, T, H]. ``hidden_states`` is HF's tuple, collected only when
    asked for: the encoder input (the embedding output) followed by every layer's output, so
    ``hidden_states[-1] is last_hidden_state``; empty otherwise.
    """

    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] = field(default_factory=tuple)


#: The ``config.json`` entries an encoder's ``HFEncoderLayout`` gives (HF BERT's layer sizes).
HF_ENCODER_CONFIG = (
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "layer_norm_eps",
)
_QKV = ("query", "key", "value")


@dataclass
class HFEncoderLayout:
    """How an encoder maps onto the layers of an HF BERT-family model (``Encoder.hf_layout``).

    Attributes:
        tables: HF ``encoder.layer.*`` key -> our tensor or a view of it (reading it exports,
            copying into it imports).
        config: the ``config.json`` entries the encoder decides: every key of
            ``HF_ENCODER_CONFIG`` (``hidden_act`` under HF's name, e.g. ``gelu``).
    """

    tables: dict[str, Tensor]
    config: dict[str, Any] = field(default_factory=dict)


def bert_layer_tables(layers: Sequence[nn.Module], hidden_size: int) -> dict[str, Tensor]:
    """HF ``BertLayer`` keys of post-LN ``TransformerLayer``s: the fused QKV weight as three
    row-block views (one per HF projection), the other weights as they are."""
    H = hidden_size
    out: dict[str, Tensor] = {}
    for i, layer in enumerate(layers):
        p = f"encoder.layer.{i}."
        qkv = layer.attention.qkv
        for j, name in enumerate(_QKV):
            out[f"{p}attention.self.{name}.weight"] = qkv.weight[j * H : (j + 1) * H]
            out[f"{p}attention.self.{name}.bias"] = qkv.bias[j * H : (j + 1) * H]
        out.update(
            {
                f"{p}attention.output.dense.weight": layer.attention.out.weight,
                f"{p}attention.output.dense.bias": layer.attention.out.bias,
                f"{p}attention.output.LayerNorm.weight": layer.attention_norm.weight,
                f"{p}attention.output.LayerNorm.bias": layer.attention_norm.bias,
                f"{p}intermediate.dense.weight": layer.feed_forward.fc1.weight,
                f"{p}intermediate.dense.bias": layer.feed_forward.fc1.bias,
                f"{p}output.dense.weight": layer.feed_forward.fc2.weight,
                f"{p}output.dense.bias": layer.feed_forward.fc2.bias,
                f"{p}output.LayerNorm.weight": layer.output_norm.weight,
                f"{p}output.LayerNorm.bias": layer.output_norm.bias,
            }
        )
    return out


def key_padding_mask(attention_mask: Tensor | None) -> Tensor | None:
    """Turn an HF ``attention_mask`` into what SDPA wants, or None when nothing is masked.

    A [B, T] mask of 1 (attend) / 0 (padding) becomes a boolean [B, 1, 1, T] mask (True =
    attend) that broadcasts over heads and queries. None or an all-ones mask returns None so
    SDPA takes its unmasked fast path. A 4-D mask (boolean or additive float) is assumed ready
    and passed through.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() == 4:
        return attention_mask
    if attention_mask.dim() != 2:
        raise config_error(
            "attention_mask",
            tuple(attention_mask.shape),
            "expected [batch, seq_len] of 1 (token) / 0 (padding)",
            "pass the tokenizer's attention_mask unchanged",
        )
    keep = attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0
    if bool(keep.all()):
        return None
    return keep[:, None, None, :]  # (B, 1, 1, T)


def split_heads(x: Tensor, num_heads: int, head_size: int) -> tuple[Tensor, ...]:
    """(B, T, parts * nh * hs) -> parts x (B, nh, T, hs) views (a fused projection's outputs).

    Split along the last dimension, not viewed as (B, T, parts, nh, hs) and unbound: backward
    then concatenates the parts' gradients in one pass, where unbind's stack followed by the
    permute's copy took two (~5% of a BERT-Mini attention block, forward + backward, on CPU)."""
    B, T = x.shape[:2]
    return tuple(
        t.view(B, T, num_heads, head_size).transpose(1, 2)
        for t in x.split(num_heads * head_size, dim=-1)
    )


def attention_with_cpu_dropout(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float, scale: float | None = None
) -> Tensor:
    """softmax(q k^T / sqrt(hs) + mask) with dropout, times v: SDPA's math, cheaper dropout.

    With attention dropout on CPU, SDPA falls back to this same math but draws its dropout mask
    with per-element Bernoulli sampling, which costs more than the two attention matmuls
    together; ``clozelab.model.dropout.dropout`` draws it about 4x faster. Masked keys get the
    dtype's minimum (as HF does), so a row with every key masked averages instead of NaN.
    ``scale`` multiplies the scores (default 1/sqrt(hs); T5 uses 1).
    """
    # (B, nh, T, hs), scaled before the product: fewer elements
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q = q * scale if scale != 1.0 else q
    scores = q @ k.transpose(-2, -1)  # (B, nh, T, T)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask  # additive float mask
    probs = dropout(scores.softmax(dim=-1), p)  # (B, nh, T, T)
    return probs @ v  # (B, nh, T, hs)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection, through SDPA.

    ``forward(x, mask)`` takes x [B, T, H]; with a ``packing`` it takes the packed real tokens
    x [N, H] of an unpadded batch (``clozelab.model.unpad``) and returns [N, H].
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        attention_dropout: float = 0.1,
        attention_backend: str = "auto",
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.attention_dropout = attention_dropout
        self.attention_backend = check_backend(attention_backend)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)  # rows: [query; key; value]
        self.out = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, mask: Tensor | None = None, packing: Packing | None = None):
        if packing is not None:
            return self.out(self._attend_packed(self.qkv(x), mask, packing))  # (N, H)
        return self.out(self._attend(self.qkv(x), mask))  # (B, T, H)

    def _attend(self, qkv: Tensor, mask: Tensor | None) -> Tensor:
        """(B, T, 3H) -> (B, T, H): attention of every head, heads side by side."""
        B, T = qkv.shape[:2]
        q, k, v = split_heads(qkv, self.num_heads, self.head_size)  # 3 x (B, nh, T, hs)
        p = self.attention_dropout if self.training else 0.0
        if p > 0.0 and qkv.device.type == "cpu" and self.attention_backend == "auto":
            y = attention_with_cpu_dropout(q, k, v, mask, p)  # (B, nh, T, hs)
        else:  # SDPA scales by 1/sqrt(hs), like BERT
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return y.transpose(1, 2).reshape(B, T, -1)  # (B, T, H)

    def _attend_packed(self, qkv: Tensor, mask: Tensor | None, packing: Packing) -> Tensor:
        """(N, 3H) -> (N, H), on the padded layout or on nested (jagged) tensors."""
        if packing.offsets is None:  # scatter into the padded layout, gather the real rows back
            full = packing.unpack(qkv).view(packing.batch, packing.length, -1)  # (B, L, 3H)
            return packing.pack(self._attend(full, mask))  # (N, H)
        q, k, v = qkv.view(-1, 3, self.num_heads, self.head_size).unbind(1)  # 3 x (N, nh, hs)
        p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            packing.nested(q), packing.nested(k), packing.nested(v), dropout_p=p
        )  # (B, nh, j, hs), jagged
        return y.transpose(1, 2).values().reshape(qkv.shape[0], -1)  # (N, H)


class FeedForward(nn.Module):
    """Position-wise dense(H -> I) -> activation -> dense(I -> H); ``bias=False``: T5's."""

    def __init__(
        self, hidden_size: int, intermediate_size: int, activation: str = "gelu", bias: bool = True
    ):
        super().__init__()
        self.activation = canonical_activation(activation)
        self.act = get_activation(self.activation)
        self.fc1 = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.fc2 = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, T, H) -> (B, T, I) -> (B, T, H)


class TransformerLayer(nn.Module):
    """One post-LN BERT layer: a = LN(x + Drop(Attn(x))); y = LN(a + Drop(FFN(a)))."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        attention_backend: str = "auto",
    ):
        super().__init__()
        self.attention = SelfAttention(hidden_size, num_heads, attention_dropout, attention_backend)
        self.attention_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.feed_forward = FeedForward(hidden_size, intermediate_size, activation)
        self.output_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, packing: Packing | None = None):
        """x [B, T, H], or the packed real tokens [N, H] with a ``packing``."""
        x = self.attention_norm(self.dropout.add(x, self.attention(x, mask, packing)))  # (B, T, H)
        return self.output_norm(self.dropout.add(x, self.feed_forward(x)))  # (B, T, H)


#: What each position's output state has read (``Encoder.context_for``).
CONTEXTS = ("bidirectional", "causal", "split_directions")


class Encoder(nn.Module):
    """Base of the encoders (DESIGN §3): the hooks clozelab asks an encoder about.

    Contract: ``encoder(hidden, attention_mask=None, output_hidden_states=False) ->
    EncoderOutput`` (``last_hidden_state`` [B, T, H], ``hidden_states`` when asked), with the
    attributes ``hidden_size`` and ``num_layers``. A user's encoder in their own module subclasses
    this and is selected with ``encoder._target_=my_module.MyEncoder`` (or a config file of the
    encoder group).
    """

    hidden_size: int
    num_layers: int
    #: batch keys ``forward`` takes as keyword arguments besides the embedded input and the
    #: attention mask; the pre-training module and the fine-tuning backbone pass those the batch
    #: has (XLNet: ``token_type_ids`` for its relative segments, ``perm_mask`` and
    #: ``target_mapping`` for its two streams). None by default.
    batch_inputs: ClassVar[tuple[str, ...]] = ()
    #: the token a sequence-level downstream head reads when ``task.pooling`` is null: ``cls``
    #: (the first token, BERT) or ``last`` (the last real token: XLNet's [CLS] sits at the end).
    summary_pooling: ClassVar[str] = "cls"
    #: the HF transformers family ``clozelab export`` writes a run with this encoder as:
    #: ``bert`` (``BertForPreTraining`` layout, which refuses the encoders it cannot map) or
    #: ``xlnet`` (``XLNetLMHeadModel``). Encoder-decoder runs are written as their decoder's.
    hf_model_type: ClassVar[str] = "bert"
    #: Why ``clozelab export`` cannot write a run with this encoder as an HF model, and what the
    #: user can do instead: ``(reason, fix)`` for the refusal's message; None: the generic
    #: refusal of encoders HF BERT's weights do not map onto.
    hf_export_refusal: ClassVar[tuple[str, str] | None] = None
    #: True when ``forward`` takes ``content_output: bool``: the pre-training module passes
    #: False when no objective of the step reads ``last_hidden_state``
    #: (``Objective.reads_encoder_output``), and the encoder skips the work that only feeds it
    #: (XLNet: the content stream of the last layer, as PLM reads the query stream only).
    skips_unread_output: ClassVar[bool] = False

    def hf_layout(self) -> HFEncoderLayout | None:
        """This encoder as the layers of an HF BERT-family model (``clozelab export``,
        ``model.init_from`` / ``clozelab.load`` of an HF directory), or None: HF BERT's layers do
        not map onto it (the export is refused; ``hf_export_refusal`` says why). The default is
        None; the post-LN ``TransformerEncoder`` gives ``BertEncoder``'s keys."""
        return None

    @classmethod
    def check_pretraining(cls, node, cfg) -> None:
        """Refuse, with a ClozelabError naming the key, a setting of the encoder configured by
        ``node`` that pre-training cannot honour, alone or with the rest of the composed config
        ``cfg`` (XLNet's memory; ERNIE-THU without entity links). Compose time; nothing by
        default."""

    def bind_corpus(self, corpus) -> dict:
        """Take what this encoder needs from the training corpus's statistics (``corpus``: a
        ``clozelab.data.corpus_stats.CorpusStats``; ERNIE-THU: the TransE entity table). Called
        once by ``build_components`` when the run has prepared shards, before the optimizer
        exists. Returns the keys of this encoder's config node it fixed (``num_entities``), which
        the run's config.yaml records so a rebuild without the corpus has the same shapes. The
        default takes nothing."""
        return {}

    def compile_targets(self) -> dict[str, nn.Module]:
        """The submodules ``model.compile`` compiles in place, by their name in the pre-training
        module (``encoder....``): each layer of ``layers`` when that is a ModuleList (one by one:
        the encoder's data-dependent steps stay eager between them), else the encoder whole. An
        encoder with other blocks (ERNIE-THU's aggregators) adds them."""
        return layer_targets("encoder", self)

    @classmethod
    def context_for(cls, node) -> str:
        """What a position's output has read, for the encoder configured by ``node``: one of
        ``CONTEXTS``: ``bidirectional`` (every token: the default), ``causal`` (itself and the
        tokens before it; a next-token LM needs it) or ``split_directions`` (separate forward and
        backward halves, ELMo's biLM)."""
        return "bidirectional"


class TransformerEncoder(Encoder):
    """A stack of ``num_layers`` post-LN BERT layers (HF ``BertEncoder`` compatible).

    Args:
        hidden_size: width H of every token vector.
        num_layers: number of layers.
        num_heads: attention heads; must divide ``hidden_size``.
        intermediate_size: width I of the feed-forward block (BERT: 4H).
        dropout: dropout after the attention output and after the feed-forward output.
        attention_dropout: dropout on the attention probabilities (training only).
        activation: feed-forward activation ("gelu" = exact erf, as HF "gelu").
        layer_norm_eps: LayerNorm epsilon (BERT: 1e-12).
        initializer_range: std of the normal initialisation of weights (BERT: 0.02).
        attention_backend: SDPA kernel: auto | flash | efficient | math | cudnn
            (``clozelab.model.attention``; an unavailable kernel warns and falls back to auto).
        unpad: run the dense parts of each layer on the real tokens of padded batches only.
        unpad_attention: with ``unpad``, attention on the ``padded`` layout or on ``nested``
            (jagged) tensors (``clozelab.model.unpad``).
    """

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
        attention_backend: str = "auto",
        unpad: bool = False,
        unpad_attention: str = "padded",
    ):
        super().__init__()
        if num_heads < 1 or hidden_size % num_heads != 0:
            raise config_error(
                "model.hidden_size / model.num_heads",
                f"{hidden_size} / {num_heads}",
                "the hidden size must be a multiple of the number of heads",
                f"choose model.num_heads dividing {hidden_size} "
                f"(e.g. {_divisor_near(hidden_size, num_heads)}) or a hidden size that "
                f"{max(num_heads, 1)} divides",
            )
        if num_layers < 1:
            raise config_error("model.num_layers", num_layers, "must be at least 1", "set >= 1")
        for key, p in (("model.dropout", dropout), ("model.attention_dropout", attention_dropout)):
            if not 0.0 <= p < 1.0:
                raise config_error(key, p, "a dropout probability must be in [0, 1)", "use 0.1")
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation = canonical_activation(activation)
        self.layer_norm_eps = layer_norm_eps
        self.attention_backend = check_backend(attention_backend)
        self.unpad, self.unpad_attention = bool(unpad), check_unpad_attention(unpad_attention)
        self.layers = nn.ModuleList(
            TransformerLayer(
                hidden_size,
                num_heads,
                intermediate_size,
                dropout,
                attention_dropout,
                self.activation,
                layer_norm_eps,
                self.attention_backend,
            )
            for _ in range(num_layers)
        )
        init_bert_weights(self, std=initializer_range)

    def hf_layout(self) -> HFEncoderLayout:
        """HF ``BertEncoder``: every layer's weights under their HF names, and its sizes."""
        config = {
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": HF_ACTIVATION_NAMES[self.activation],
            "hidden_dropout_prob": self.dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "layer_norm_eps": self.layer_norm_eps,
        }
        return HFEncoderLayout(bert_layer_tables(self.layers, self.hidden_size), config)

    def forward(
        self,
        hidden: Tensor,
        attention_mask: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Encode ``hidden`` [B, T, H]; ``attention_mask`` [B, T] is 1 for tokens, 0 for padding."""
        mask = key_padding_mask(attention_mask)  # (B, 1, 1, T) bool, or None
        return run_layers(self, self.layers, hidden, attention_mask, mask, output_hidden_states)


def run_layers(
    encoder: nn.Module,
    layers: Sequence[nn.Module],
    hidden: Tensor,
    attention_mask: Tensor | None,
    mask: Tensor | None,
    output_hidden_states: bool = False,
    final_norm: nn.Module | None = None,
) -> EncoderOutput:
    """The layer loop of the transformer encoders: ``layers`` in order, then ``final_norm``.

    Reads the ``encoder``'s ``attention_backend``, ``unpad``, ``unpad_attention``, ``num_heads``,
    ``hidden_size`` and ``attention_dropout``. With ``unpad`` and padding in a 2-D
    ``attention_mask``, the layers run on the packed real tokens and every returned state is
    scattered back to [B, T, H] (zeros at padding); a 4-D mask is used as it is, padded.
    """
    packing = None
    if (
        encoder.unpad
        and mask is not None
        and attention_mask is not None
        and (attention_mask.dim() == 2)
    ):
        keep = attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0
        if not bool(keep.all()):  # the causal mask is never None: check the padding itself
            packing = Packing.from_mask(keep, nested=encoder.unpad_attention == "nested")
    states: list[Tensor] = [hidden] if output_hidden_states else []
    nested = packing is not None and packing.offsets is not None
    p = encoder.attention_dropout if encoder.training else 0.0
    head_size = encoder.hidden_size // encoder.num_heads
    masked = mask is not None and not nested
    context = attention_context(encoder.attention_backend, hidden, head_size, masked, p, nested)
    x = hidden if packing is None else packing.pack(hidden)  # (B, T, H) or (N, H)
    with context:
        for layer in layers:
            x = layer(x, mask, packing)
            if output_hidden_states:
                states.append(x if packing is None else packing.unpack(x))
    if final_norm is not None:
        x = final_norm(x)
    last = x if packing is None else packing.unpack(x)  # (B, T, H)
    if output_hidden_states:
        states[-1] = last
    return EncoderOutput(last_hidden_state=last, hidden_states=tuple(states))


def _divisor_near(n: int, target: int) -> int:
    """The divisor of ``n`` closest to ``target`` (for error messages)."""
    divisors = [d for d in range(1, n + 1) if n % d == 0] if n > 0 else [1]
    return min(divisors, key=lambda d: (abs(d - target), d))


__all__ = [
    "HF_ENCODER_CONFIG",
    "EncoderOutput",
    "FeedForward",
    "HFEncoderLayout",
    "SelfAttention",
    "TransformerEncoder",
    "TransformerLayer",
    "bert_layer_tables",
    "key_padding_mask",
    "run_layers",
]
