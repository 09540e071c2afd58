"""Embedding variants the seed systems change (DESIGN §3): sinusoidal positions (Vaswani et al.
2017), ALBERT's factorized embeddings (Lan et al. 2020: E < H, then a projection to H), role
(dialogue) embeddings for ERNIE's dialogue LM (Sun et al. 2019, SPECS §11) and task embeddings
for ERNIE 2.0's continual multi-task pre-training (Sun et al. 2020, SPECS §20).

All take ``(input_ids, token_type_ids, position_ids, role_ids)`` and return [B, T, H], and expose
``word_embeddings`` (the table a decoder ties to; E wide for the factorized one).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.dropout import Dropout
from clozelab.model.embeddings import Embedding, HFEmbeddingLayout, bert_config, bert_tables
from clozelab.model.layers import init_bert_weights
from clozelab.model.lookup import Lookup


def sinusoidal_table(n_positions: int, size: int) -> Tensor:
    """[n_positions, size]: sin on even columns, cos on odd, wavelengths 2pi..10000*2pi."""
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    rate = torch.exp(torch.arange(0, size, 2, dtype=torch.float64) * (-math.log(10000.0) / size))
    table = torch.zeros(n_positions, size, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: size // 2])
    return table.float()


class _TableEmbeddings(Embedding):
    """word + position + segment (or role) tables of width ``size``, then LayerNorm and dropout.

    Subclasses choose the position table (learned or fixed) and what follows (a projection).
    """

    def __init__(
        self,
        vocab_size: int,
        size: int,
        max_position_embeddings: int,
        type_vocab_size: int,
        layer_norm_eps: float,
        dropout: float,
        pad_token_id: int | None,
        learned_positions: bool,
        num_roles: int = 0,
    ):
        super().__init__()
        if pad_token_id is not None and not 0 <= pad_token_id < vocab_size:
            raise config_error(
                "model.pad_token_id",
                pad_token_id,
                f"outside the vocabulary of {vocab_size}",
                "use the tokenizer's pad_token_id",
            )
        self.vocab_size, self.max_position_embeddings = vocab_size, max_position_embeddings
        self.pad_token_id = pad_token_id
        self.word_embeddings = Lookup(vocab_size, size, padding_idx=pad_token_id)
        if learned_positions:
            self.position_embeddings = Lookup(max_position_embeddings, size)
        else:
            self.register_buffer(
                "position_table", sinusoidal_table(max_position_embeddings, size), persistent=False
            )
        self.token_type_embeddings = Lookup(type_vocab_size, size)
        self.role_embeddings = Lookup(num_roles, size) if num_roles else None
        self.norm = nn.LayerNorm(size, eps=layer_norm_eps)
        self.dropout = Dropout(dropout)

    def _init_weights(self, std: float) -> None:
        """BERT's initialisation (normal(0, std) weights, zero biases), then a zero [PAD] row."""
        init_bert_weights(self, std=std)
        if self.pad_token_id is not None:
            with torch.no_grad():
                self.word_embeddings.weight[self.pad_token_id].zero_()

    def _positions(self, seq_len: int, position_ids: Tensor | None) -> Tensor:
        if seq_len > self.max_position_embeddings:
            raise config_error(
                "data.max_seq_length",
                seq_len,
                f"longer than model.max_position_embeddings={self.max_position_embeddings}",
                "lower data.max_seq_length or raise model.max_position_embeddings",
            )
        if hasattr(self, "position_embeddings"):
            table = self.position_embeddings.weight
        else:
            table = self.position_table
        return table[:seq_len] if position_ids is None else table[position_ids]

    def _embed(self, input_ids, token_type_ids, position_ids, role_ids, extra=None) -> Tensor:
        """word + position + segment (or role) + ``extra`` (broadcast to [B, T, E]), then
        LayerNorm and dropout."""
        if role_ids is not None and self.role_embeddings is None:
            raise config_error(
                "embedding",
                type(self).__name__,
                "the batch has role_ids but no role table",
                "use embedding=role (ERNIE DLM) or drop role_ids from the batch",
            )
        x = self.word_embeddings(input_ids)  # (B, T, E)
        x = x + self._positions(input_ids.shape[-1], position_ids)
        if role_ids is not None:  # the dialogue role replaces the segment (SPECS §11)
            x = x + self.role_embeddings(role_ids)
        elif token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        if extra is not None:
            x = x + extra
        return self.dropout(self.norm(x))


class SinusoidalEmbeddings(_TableEmbeddings):
    """Word + fixed sinusoidal position + segment embeddings, then LayerNorm and dropout.

    Args: as ``BertEmbeddings``; the position table is fixed (no parameters), so sequences up to
    ``max_position_embeddings`` are accepted whatever was seen in training.
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
        super().__init__(
            vocab_size,
            hidden_size,
            max_position_embeddings,
            type_vocab_size,
            layer_norm_eps,
            dropout,
            pad_token_id,
            learned_positions=False,
        )
        self.hidden_size = hidden_size
        self._init_weights(initializer_range)

    def forward(self, input_ids, token_type_ids=None, position_ids=None, role_ids=None) -> Tensor:
        return self._embed(input_ids, token_type_ids, position_ids, role_ids)  # (B, T, H)


class FactorizedEmbeddings(_TableEmbeddings):
    """ALBERT's factorized embeddings: E-wide tables, LayerNorm, dropout, then Linear(E -> H).

    The vocabulary costs V*E + E*H parameters instead of V*H. ``word_embeddings`` is E wide: tie
    the MLM/SBO decoders with ``embedding_size=E``.

    Args:
        embedding_size: width E of the tables (ALBERT: 128). E < H is the point; E >= H is
            accepted (ALBERT's ablation goes up to E = H) but saves nothing.
        hidden_size: width H the projection maps to (the encoder's).
        (others as ``BertEmbeddings``)
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        embedding_size: int = 128,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.1,
        pad_token_id: int | None = 0,
        initializer_range: float = 0.02,
    ):
        if embedding_size < 1:
            raise config_error(
                "embedding.embedding_size",
                embedding_size,
                "must be >= 1",
                "use e.g. embedding.embedding_size=128 (ALBERT)",
            )
        super().__init__(
            vocab_size,
            embedding_size,
            max_position_embeddings,
            type_vocab_size,
            layer_norm_eps,
            dropout,
            pad_token_id,
            learned_positions=True,
        )
        self.hidden_size, self.embedding_size = hidden_size, embedding_size
        self.projection = nn.Linear(embedding_size, hidden_size)
        self._init_weights(initializer_range)

    def forward(self, input_ids, token_type_ids=None, position_ids=None, role_ids=None) -> Tensor:
        x = self._embed(input_ids, token_type_ids, position_ids, role_ids)  # (B, T, E)
        return self.projection(x)  # (B, T, H)


class RoleEmbeddings(_TableEmbeddings):
    """BERT embeddings plus a dialogue-role table (ERNIE DLM, SPECS §11).

    With ``role_ids`` (Q = 0, R = 1 per token) the role table replaces the segment table; without
    them (plain-text batches) the segment table is used, so text MLM and dialogue batches share
    one model.

    Args:
        num_roles: rows of the role table (2: query, response).
        (others as ``BertEmbeddings``)
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        num_roles: int = 2,
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.1,
        pad_token_id: int | None = 0,
        initializer_range: float = 0.02,
    ):
        if num_roles < 1:
            raise config_error("embedding.num_roles", num_roles, "must be >= 1", "use 2 (Q, R)")
        super().__init__(
            vocab_size,
            hidden_size,
            max_position_embeddings,
            type_vocab_size,
            layer_norm_eps,
            dropout,
            pad_token_id,
            learned_positions=True,
            num_roles=num_roles,
        )
        self.hidden_size = hidden_size
        self._init_weights(initializer_range)

    def forward(self, input_ids, token_type_ids=None, position_ids=None, role_ids=None) -> Tensor:
        return self._embed(input_ids, token_type_ids, position_ids, role_ids)  # (B, T, H)


_TASK_FIX = (
    "give task ids 0..num_tasks-1: 0 is the default (fine-tuning's task); a run gives each "
    "objective its order of introduction in the schedule (its export's config.json "
    "clozelab_task_ids names them)"
)


class TaskEmbeddings(_TableEmbeddings):
    """BERT embeddings plus a learned task table (ERNIE 2.0, Sun et al. 2020; SPECS §20).

    ``task_ids`` ([B], one task per sequence, or [B, T]) select a row added to every token's
    word + position + segment sum before the LayerNorm. Without them (validation of a joint step,
    fine-tuning, ``clozelab.load``) every sequence gets task 0, so a fine-tuned model sees a
    constant vector, as ERNIE 2.0's fine-tuning does. The continual schedule gives each objective
    its order of introduction as task id (``training/schedule.py``).

    This is HF ``ErnieEmbeddings`` with ``use_task_id=True``: word + segment + position +
    ``task_type_embeddings[task_type_ids]`` (row 0 when ``task_type_ids`` is None), then
    LayerNorm and dropout, so ``clozelab export`` writes such a run as an HF ERNIE model
    (``hf_layout``; HF takes ``task_type_ids`` [B, T]: a [B] task id repeated over the tokens).

    Args:
        num_tasks: rows of the task table: at least the number of scheduled objectives.
        (others as ``BertEmbeddings``)
    """

    batch_inputs = ("task_ids",)

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        num_tasks: int,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.1,
        pad_token_id: int | None = 0,
        initializer_range: float = 0.02,
    ):
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise config_error(
                "embedding.num_tasks",
                num_tasks,
                "must be an integer >= 1",
                "one row per scheduled objective, e.g. 5",
            )
        super().__init__(
            vocab_size,
            hidden_size,
            max_position_embeddings,
            type_vocab_size,
            layer_norm_eps,
            dropout,
            pad_token_id,
            learned_positions=True,
        )
        self.hidden_size, self.num_tasks = hidden_size, num_tasks
        self.task_embeddings = Lookup(num_tasks, hidden_size)
        self._init_weights(initializer_range)

    def hf_layout(self) -> HFEmbeddingLayout:
        """HF ``ErnieEmbeddings`` (``use_task_id``): BERT's tables plus the task table as
        ``task_type_embeddings``, ``task_type_vocab_size`` = ``num_tasks``."""
        tables = bert_tables(self)
        tables["embeddings.task_type_embeddings.weight"] = self.task_embeddings.weight
        config = {**bert_config(self), "use_task_id": True, "task_type_vocab_size": self.num_tasks}
        return HFEmbeddingLayout("ernie", tables, config)

    def check_inputs(self, input_ids: Tensor, task_ids: Tensor | None = None) -> None:
        """``task_ids``: integers, [B] (one task per sequence) or [B, T] (per token) for
        ``input_ids`` [B, T], each a row of the task table (0..num_tasks-1)."""
        if task_ids is None:
            return
        shapes = (tuple(input_ids.shape[:1]), tuple(input_ids.shape))
        if task_ids.is_floating_point() or task_ids.is_complex() or task_ids.dtype == torch.bool:
            raise config_error("task_ids", task_ids.dtype, "task ids are integers", _TASK_FIX)
        if tuple(task_ids.shape) not in shapes:
            raise config_error(
                "task_ids",
                f"shape {list(task_ids.shape)}",
                f"input_ids are {list(input_ids.shape)}",
                f"give one task id per sequence {list(shapes[0])}, one per token "
                f"{list(shapes[1])}, or one int for every sequence",
            )
        outside = task_ids[(task_ids < 0) | (task_ids >= self.num_tasks)]
        if outside.numel():
            raise config_error(
                "task_ids",
                int(outside[0]),
                f"outside the task table of {self.num_tasks} rows (ids 0..{self.num_tasks - 1})",
                _TASK_FIX,
            )

    def forward(
        self,
        input_ids,
        token_type_ids=None,
        position_ids=None,
        role_ids=None,
        task_ids: Tensor | None = None,
    ) -> Tensor:
        if task_ids is None:
            task = self.task_embeddings.weight[0]  # (H,) broadcast
        elif task_ids.dim() == 1:
            task = self.task_embeddings(task_ids)[:, None, :]  # (B, 1, H)
        else:
            task = self.task_embeddings(task_ids)  # (B, T, H)
        return self._embed(input_ids, token_type_ids, position_ids, role_ids, task)  # (B, T, H)
