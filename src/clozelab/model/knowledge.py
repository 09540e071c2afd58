"""ERNIE-THU's knowledgeable encoder (Zhang et al. 2019, §3.2-3.3; SPECS §19).

``KnowledgeEncoder`` = the T-Encoder (ordinary post-LN BERT layers over the tokens) followed by
the K-Encoder: ``knowledge_layers`` aggregators (``Aggregator``), each running

1. multi-head self-attention over the tokens, and, separately, over the entities aligned to
   them (an entity sits at the first token of its mention, ``entity_links`` [B, T], -1 where no
   entity), each as a BERT attention block (attention, dropout, residual, LayerNorm);
2. the information fusion layer, with σ = the activation (GELU):
   token j aligned to entity k: h_j = σ(W̃_t w̃_j + W̃_e ẽ_k + b̃); token without entity:
   h_j = σ(W̃_t w̃_j + b̃);
3. separate outputs for tokens and entities (the last aggregator has no entity output, as in the
   released code: nothing reads it, and under DDP an unused parameter is an error).
   ``fusion_output="residual"`` (default) is the released code's (thunlp/ERNIE
   ``BertOutput``/``BertOutput_ent``): w_j = LN(w̃_j + Drop(W_t h_j + b_t)),
   e_k = LN(ẽ_k + Drop(W_e h_j + b_e)); ``"activation"`` is the paper's equation (6):
   w_j = σ(W_t h_j + b_t), e_k = σ(W_e h_j + b_e).

The entity inputs are rows of ``entity_embeddings``: TransE vectors of the corpus's link graph
(``clozelab.data.transe``), loaded by ``bind_corpus`` when the run has prepared shards, fixed
during pre-training as in the paper (``freeze_entities``). Without entity inputs (a downstream
task without mentions) the entity stream is skipped and the aggregators reduce to attention +
σ(W̃_t w̃ + b̃) feed-forward blocks.

Shape legend: B batch, T sequence length, H hidden size, E entity size, I intermediate size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.attention import check_backend
from clozelab.model.dropout import Dropout
from clozelab.model.encoder import (
    Encoder,
    EncoderOutput,
    SelfAttention,
    TransformerLayer,
    key_padding_mask,
    run_layers,
)
from clozelab.model.layers import canonical_activation, get_activation, init_bert_weights
from clozelab.model.lookup import Lookup

FUSION_OUTPUTS = ("residual", "activation")


@dataclass
class KnowledgeOutput(EncoderOutput):
    """``EncoderOutput`` plus the entity table the inputs were read from (``[N, E]``: the dEA
    objective scores its candidates against it) and the last aggregator's entity states ẽ
    (after its entity attention; ``[B, T, E]``, zero where no entity; None without entity
    inputs)."""

    entity_table: Tensor | None = None
    entity_hidden_state: Tensor | None = None


class Aggregator(nn.Module):
    """One K-Encoder layer: token and entity attention, then the information fusion."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, entity_dim: int,
                 entity_heads: int, dropout: float, attention_dropout: float, activation: str,
                 layer_norm_eps: float, fusion_output: str, attention_backend: str,
                 entity_output: bool = True):  # fmt: skip
        super().__init__()
        self.attention = SelfAttention(hidden_size, num_heads, attention_dropout, attention_backend)
        self.attention_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.entity_attention = SelfAttention(entity_dim, entity_heads, attention_dropout,
                                              attention_backend)  # fmt: skip
        self.entity_attention_norm = nn.LayerNorm(entity_dim, eps=layer_norm_eps)
        self.token_in = nn.Linear(hidden_size, intermediate_size)  # W̃_t, b̃
        self.entity_in = nn.Linear(entity_dim, intermediate_size, bias=False)  # W̃_e
        self.token_out = nn.Linear(intermediate_size, hidden_size)  # W_t, b_t
        self.token_out_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.entity_output = entity_output  # the last aggregator's would feed nothing
        if entity_output:
            self.entity_out = nn.Linear(intermediate_size, entity_dim)  # W_e, b_e
            self.entity_out_norm = nn.LayerNorm(entity_dim, eps=layer_norm_eps)
        self.act = get_activation(activation)
        self.dropout = Dropout(dropout)
        self.residual = fusion_output == "residual"

    def forward(self, w: Tensor, e: Tensor | None, has: Tensor | None, mask: Tensor | None,
                entity_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """w [B, T, H] tokens; e [B, T, E] entities at their tokens, ``has`` [B, T, 1] float
        (1 where a token has an entity); both None without entity inputs."""
        w = self.attention_norm(self.dropout.add(w, self.attention(w, mask)))  # w̃ (B, T, H)
        h = self.token_in(w)  # (B, T, I)
        if e is not None:
            e = self.entity_attention_norm(
                self.dropout.add(e, self.entity_attention(e, entity_mask))
            )  # ẽ (B, T, E)
            h = h + self.entity_in(e) * has
        h = self.act(h)
        if self.residual:
            w_out = self.token_out_norm(self.dropout.add(w, self.token_out(h)))
        else:
            w_out = self.act(self.token_out(h))
        if e is None:
            return w_out, None
        if not self.entity_output:  # the last aggregator: its entity states ẽ
            return w_out, e * has
        if self.residual:
            e_out = self.entity_out_norm(self.dropout.add(e, self.entity_out(h)))
        else:
            e_out = self.act(self.entity_out(h))
        return w_out, e_out * has  # (B, T, H), (B, T, E)


class KnowledgeEncoder(Encoder):
    """T-Encoder + K-Encoder (ERNIE-THU). Takes ``entity_links`` from the batch.

    Args:
        hidden_size, num_heads, intermediate_size, dropout, attention_dropout, activation,
            layer_norm_eps, initializer_range, attention_backend: as ``TransformerEncoder``.
        num_layers: all layers, T-Encoder and K-Encoder together (the paper: 6 + 6 = 12).
        knowledge_layers: M, the K-Encoder's aggregators; None: half of ``num_layers``
            (rounded up), the paper's split.
        entity_dim: width E of the entity vectors (the paper's TransE: 100).
        entity_heads: attention heads over the entities; must divide ``entity_dim``.
        num_entities: rows of the entity table; filled from the corpus by ``bind_corpus`` (and
            recorded in the run's config.yaml, so a rebuilt model has the same shapes).
        freeze_entities: keep the entity vectors fixed (the paper), or train them.
        fusion_output: ``residual`` (released code) or ``activation`` (the paper's equation).
        transe: TransE settings besides the width (``clozelab.data.transe.TransESettings``).
    """

    batch_inputs: ClassVar[tuple[str, ...]] = ("entity_links",)
    hf_export_refusal = (
        "ERNIE-THU's K-Encoder (the knowledge-fusion aggregators that mix each token with the "
        "TransE vector of the entity it mentions, and the entity table) has no equivalent in HF "
        "transformers, and every output after the T-Encoder depends on it, so no HF model "
        "computes what this encoder does",
        "use the run through clozelab: clozelab finetune / evaluate checkpoint=RUN_DIR (task "
        "text is linked to the run's entities), or clozelab.load(RUN_DIR) in Python "
        "(model.encode(ids) without entities; model.encoder(model.embedding(ids), mask, "
        "entity_links=links) with them); for an HF BERT export pre-train with encoder=post_ln",
    )

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        knowledge_layers: int | None = None,
        entity_dim: int = 100,
        entity_heads: int = 4,
        num_entities: int = 0,
        freeze_entities: bool = True,
        fusion_output: str = "residual",
        transe=None,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        attention_backend: str = "auto",
    ):
        super().__init__()
        from clozelab.data.transe import TransESettings

        m = (num_layers + 1) // 2 if knowledge_layers is None else knowledge_layers
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= num_layers:
            raise config_error("encoder.knowledge_layers", knowledge_layers,
                               f"must be an integer in [1, num_layers={num_layers}]",
                               "e.g. half of the layers, as the paper's 6 of 12")  # fmt: skip
        for key, size, heads in (("model.num_heads", hidden_size, num_heads),
                                 ("encoder.entity_heads", entity_dim, entity_heads)):  # fmt: skip
            if heads < 1 or size % heads:
                raise config_error(key, heads, f"must divide the width {size}",
                                   f"choose a divisor of {size}")  # fmt: skip
        if fusion_output not in FUSION_OUTPUTS:
            raise config_error("encoder.fusion_output", fusion_output,
                               f"one of {list(FUSION_OUTPUTS)}", "use residual")  # fmt: skip
        self.transe = TransESettings(dim=entity_dim, **dict(transe or {}))  # checked here
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.knowledge_layers, self.entity_dim = m, entity_dim
        self.attention_dropout = attention_dropout
        self.attention_backend = check_backend(attention_backend)
        self.unpad, self.unpad_attention = False, "padded"  # read by run_layers
        self.freeze_entities = bool(freeze_entities)
        activation = canonical_activation(activation)
        self.layers = nn.ModuleList(
            TransformerLayer(hidden_size, num_heads, intermediate_size, dropout,
                             attention_dropout, activation, layer_norm_eps, self.attention_backend)
            for _ in range(num_layers - m)
        )  # fmt: skip
        self.aggregators = nn.ModuleList(
            Aggregator(hidden_size, num_heads, intermediate_size, entity_dim, entity_heads,
                       dropout, attention_dropout, activation, layer_norm_eps, fusion_output,
                       self.attention_backend, entity_output=i < m - 1)
            for i in range(m)
        )  # fmt: skip
        self.entity_embeddings = Lookup(max(int(num_entities), 1), entity_dim)
        init_bert_weights(self, std=initializer_range)
        self.entity_embeddings.weight.requires_grad_(not self.freeze_entities)

    def compile_targets(self) -> dict[str, nn.Module]:
        """The T-Encoder's layers and each aggregator (the K-Encoder's layers), one by one."""
        aggregators = {f"encoder.aggregators.{i}": a for i, a in enumerate(self.aggregators)}
        return {**super().compile_targets(), **aggregators}

    def bind_corpus(self, corpus) -> dict:
        """Load the TransE vectors of the corpus's entities (trained once, cached beside the
        shards) into the entity table; returns ``{"num_entities": N}`` for the run's config."""
        vectors = corpus.entity_embeddings(self.transe)
        self.entity_embeddings = Lookup.from_pretrained(
            vectors.float(), freeze=self.freeze_entities
        )
        return {"num_entities": int(vectors.shape[0])}

    @classmethod
    def check_pretraining(cls, node, cfg) -> None:
        """Pre-training needs the entity inputs: ``data.entity_links=true``."""
        data = cfg.get("data") or {}
        if not data.get("entity_links"):
            raise config_error(
                "data.entity_links", data.get("entity_links"),
                "encoder=ernie_thu fuses the entities aligned to the tokens, and the shards "
                "carry none without entity links (and no entity table to embed them)",
                "set data.entity_links=true (experiment=ernie_thu does)",
            )  # fmt: skip

    def forward(
        self,
        hidden: Tensor,
        attention_mask: Tensor | None = None,
        output_hidden_states: bool = False,
        entity_links: Tensor | None = None,
    ) -> KnowledgeOutput:
        """Encode ``hidden`` [B, T, H]; ``entity_links`` [B, T]: the entity id at the first token
        of each mention, -1 elsewhere (None: no entity inputs)."""
        mask = key_padding_mask(attention_mask)  # (B, 1, 1, T) bool, or None
        out = run_layers(self, self.layers, hidden, attention_mask, mask, output_hidden_states)
        states = list(out.hidden_states)
        w, e = out.last_hidden_state, None
        has = entity_mask = None
        if entity_links is not None:
            present = entity_links >= 0  # (B, T)
            has = present.unsqueeze(-1).to(w.dtype)  # (B, T, 1)
            e = self.entity_embeddings(entity_links.clamp_min(0)).to(w.dtype) * has  # (B, T, E)
            # entities attend to the entities of their sequence; a row without any attends to
            # all (its outputs are zeroed) instead of to nothing (NaN)
            keys = present | ~present.any(-1, keepdim=True)
            entity_mask = keys[:, None, None, :]  # (B, 1, 1, T)
        for aggregator in self.aggregators:
            w, e = aggregator(w, e, has, mask, entity_mask)
            if output_hidden_states:
                states.append(w)
        return KnowledgeOutput(
            last_hidden_state=w,
            hidden_states=tuple(states),
            entity_table=self.entity_embeddings.weight,
            entity_hidden_state=e,
        )
