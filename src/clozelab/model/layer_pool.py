"""Layer mixes and pooled text embeddings from an encoder's hidden states.

- ``LayerAverage``: the fixed average of the last ``k`` hidden states (the seeds' feature-based
  recipe: "the average of the last four layers"; Devlin et al. §5.3 report it among the best).
- ``ScalarMix``: ELMo's learned mix, ``gamma * sum_k softmax(w)_k * h_k``, initialised to the
  plain average.
- ``embed_texts``: one call from texts to vectors: encode, take ``layers`` (one index, or the
  average of several), pool (``mean`` of the text's tokens, the ``cls`` vector, or ``none``: every
  token vector). ``clozelab.load(...).embed`` and the bundled similarity tasks use it.

``hidden_states`` are HF's ``output_hidden_states``: the embedding output, then each layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from clozelab.core.errors import config_error

POOLS = ("mean", "cls", "none")


def last_layers(hidden_states: Sequence[Tensor], k: int, key: str = "mix_layers") -> Tensor:
    """The last ``k`` hidden states stacked: ``(k, B, T, H)``; a clear error when there are
    fewer (``hidden_states`` hold the embedding output and one state per layer)."""
    n = len(hidden_states)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise config_error(
            key,
            k,
            f"the encoder yields {n} hidden states (the embedding output + {n - 1} layers)",
            f"set {key} (eval.{key} in a suite) to an integer from 1 to {n}",
        )
    return torch.stack(tuple(hidden_states[-k:]))


class LayerAverage(nn.Module):
    """The fixed (parameter-free) average of the last ``num_layers`` hidden states."""

    def __init__(self, num_layers: int = 4):
        super().__init__()
        self.num_layers = num_layers

    def forward(self, hidden_states: Sequence[Tensor]) -> Tensor:
        return last_layers(hidden_states, self.num_layers).mean(0)  # (B, T, H)


class ScalarMix(nn.Module):
    """``gamma * sum_k softmax(w)_k * h_k`` over the last ``num_layers`` hidden states."""

    def __init__(self, num_layers: int = 4):
        super().__init__()
        self.num_layers = num_layers
        self.weights = nn.Parameter(torch.zeros(num_layers))  # softmax(0) = plain average
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, hidden_states: Sequence[Tensor]) -> Tensor:
        stacked = last_layers(hidden_states, self.num_layers)  # (k, B, T, H)
        w = self.weights.softmax(0).to(stacked.dtype)
        return self.gamma * torch.einsum("k,kbth->bth", w, stacked)


#: ``layer_mix`` choices of feature-based use (``mode=features``).
LAYER_MIXES: dict[str, type[nn.Module]] = {"average": LayerAverage, "learned": ScalarMix}


def layer_mix(name: str, num_layers: int) -> nn.Module:
    """The ``layer_mix`` module ``name`` over the last ``num_layers`` hidden states."""
    if name not in LAYER_MIXES:
        raise config_error(
            "layer_mix", name, "unknown layer mix", f"use one of {sorted(LAYER_MIXES)}"
        )
    return LAYER_MIXES[name](num_layers)


def select_layers(hidden_states: Sequence[Tensor], layers: int | Sequence[int]) -> Tensor:
    """``hidden_states[layers]`` (an index: -1 = last layer, 0 = embedding output), or the
    average of the states at several indices (``[-4, -3, -2, -1]``: the last four)."""
    indices = [layers] if isinstance(layers, int) else list(layers)
    n = len(hidden_states)
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n]
    if not indices or bad:
        raise config_error(
            "layers",
            layers,
            f"must be a hidden-state index or a list of them, in [-{n}, {n}) (the embedding "
            f"output + {n - 1} layers)",
            "e.g. layers=-1 (last layer) or layers=[-4,-3,-2,-1] (average of the last four)",
        )
    return torch.stack([hidden_states[i] for i in indices]).mean(0)


@torch.no_grad()
def embed_texts(
    encode: Callable[[Tensor, Tensor, Tensor], Sequence[Tensor]],
    tokenizer,
    texts: Sequence[str],
    *,
    layers: int | Sequence[int] = -1,
    pool: str = "mean",
    max_length: int = 512,
    batch_size: int = 64,
) -> Tensor | list[Tensor]:
    """Vectors of ``texts``, each encoded alone as ``[CLS] text [SEP]``.

    ``encode(input_ids, attention_mask, token_type_ids)`` returns the hidden states; ``tokenizer``
    is a clozelab ``Tokenizer``. ``pool="mean"``: the mean over the text's tokens ([CLS]/[SEP]
    excluded), ``[N, H]``; ``"cls"``: the [CLS] vector, ``[N, H]``; ``"none"``: one
    ``[n_tokens_i, H]`` tensor per text ([CLS]/[SEP] excluded). Texts longer than ``max_length``
    are cut.
    """
    if pool not in POOLS:
        raise config_error("pool", pool, "unknown pooling", f"use one of {POOLS}")
    if isinstance(texts, str):
        texts = [texts]
    ids = [e.ids[: max_length - 2] for e in tokenizer.encode_batch(list(texts))]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pooled: list[Tensor | None] = [None] * len(ids)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        lengths = torch.tensor([len(ids[i]) for i in index])
        width = int(lengths.max()) + 2
        input_ids = torch.full((len(index), width), tokenizer.pad_id, dtype=torch.long)
        for row, i in enumerate(index):  # batch assembly, not a per-token computation
            sequence = [tokenizer.cls_id, *ids[i], tokenizer.sep_id]
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
        positions = torch.arange(width)[None, :]
        attention = (positions < lengths[:, None] + 2).long()
        h = select_layers(encode(input_ids, attention, torch.zeros_like(input_ids)), layers)
        tokens = (positions >= 1) & (positions <= lengths[:, None])  # no [CLS]/[SEP]/padding
        for row, i in enumerate(index):
            if pool == "cls":
                pooled[i] = h[row, 0]
            elif pool == "none":
                pooled[i] = h[row, 1 : 1 + int(lengths[row])]
        if pool == "mean":
            m = tokens[..., None].to(h.dtype)
            means = (h * m).sum(1) / m.sum(1).clamp(min=1)
            for row, i in enumerate(index):
                pooled[i] = means[row]
    if pool == "none":
        return pooled
    if not pooled:
        return torch.zeros(0, 0)
    return torch.stack(pooled)
