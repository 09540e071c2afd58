"""Small building blocks shared by the embeddings, the encoder and the objectives' heads.

- ``ACTIVATIONS`` / ``get_activation``: the activation names a config may use.
- ``Pooler``: BERT's ``tanh(dense(h_[CLS]))`` sentence vector (NSP, SOP, DLM, fine-tuning).
- ``LMTransform``: the dense -> activation -> LayerNorm block before a tied vocabulary decoder.
- ``init_bert_weights``: BERT/HF initialisation (normal(0, 0.02), zero biases, unit LayerNorm).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.core.errors import config_error

#: Activation names accepted by the encoder and the heads. "gelu" is the exact erf form (HF
#: "gelu"); "gelu_tanh" is the tanh approximation (HF "gelu_new" / "gelu_pytorch_tanh"), within
#: about 5e-4 of the exact one.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}

#: Names found in HF configs, mapped onto ours.
ACTIVATION_ALIASES = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "swish": "silu"}

#: Our activation names as HF ``hidden_act`` values (for config.json export).
HF_ACTIVATION_NAMES = {
    "gelu": "gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
    "relu": "relu",
    "silu": "silu",
}


def canonical_activation(name: str, key: str = "model.activation") -> str:
    """Our canonical name for activation ``name``; a ClozelabError naming ``key`` if unknown."""
    canonical = ACTIVATION_ALIASES.get(name, name)
    if canonical not in ACTIVATIONS:
        choices = sorted(ACTIVATIONS)
        raise config_error(key, name, "unknown activation", f"use one of {choices} (gelu = erf)")
    return canonical


def get_activation(name: str, key: str = "model.activation") -> Callable[[Tensor], Tensor]:
    """The activation function called ``name``."""
    return ACTIVATIONS[canonical_activation(name, key)]


class Pooler(nn.Module):
    """BERT pooler: ``tanh(dense(hidden[:, 0]))``, the [CLS] sentence vector."""

    def __init__(self, hidden_size: int, initializer_range: float = 0.02):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        init_bert_weights(self, std=initializer_range)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.dense(hidden[:, 0]).tanh()  # (B, T, H) -> (B, H)


class LMTransform(nn.Module):
    """dense -> activation -> LayerNorm, applied before a tied vocabulary decoder.

    ``out_size`` (default ``hidden_size``) lets a factorized embedding (ALBERT, E < H) decode
    against its E-wide embedding table.
    """

    def __init__(
        self,
        hidden_size: int,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        out_size: int | None = None,
        initializer_range: float = 0.02,
    ):
        super().__init__()
        out_size = hidden_size if out_size is None else out_size
        self.activation = canonical_activation(activation)
        self.act = get_activation(self.activation)
        self.dense = nn.Linear(hidden_size, out_size)
        self.norm = nn.LayerNorm(out_size, eps=layer_norm_eps)
        init_bert_weights(self, std=initializer_range)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.norm(self.act(self.dense(hidden)))  # (..., H) -> (..., out_size)


def init_bert_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Initialise ``module`` and its children as BERT does; returns ``module``.

    Linear and Embedding weights ~ normal(0, std); Linear biases zero; LayerNorm weight one and
    bias zero. Parameters of other module types are left as they are.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module
