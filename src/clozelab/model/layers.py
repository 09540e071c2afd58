"""Small building blocks shared by the embeddings, the encoder and the objectives' heads.

- ``ACTIVATIONS`` / ``get_activation``: the activation names a config may use.
- ``Dropout``: inverted dropout with a CPU fast path (4x cheaper mask generation), also under
  ``torch.compile``; ``relu_dropout``: relu then dropout, saving only the output (T5's FFN).
- ``Pooler``: BERT's ``tanh(dense(h_[CLS]))`` sentence vector (NSP, SOP, DLM, fine-tuning).
- ``LMTransform``: the dense -> activation -> LayerNorm block before a tied vocabulary decoder.
- ``init_bert_weights``: BERT/HF initialisation (normal(0, 0.02), zero biases, unit LayerNorm).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
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


def _dropped(p: float) -> int:
    """Dropout probability ``p`` quantised to the elements dropped per 65536 (16 random bits)."""
    return round(p * 65536)


def _kept_scale(p: float) -> float:
    """1/(1-p) for the quantised ``p``: the value of a kept element of the mask."""
    return 65536 / (65536 - _dropped(p))


def _keep_mask(x: Tensor, p: float) -> Tensor:
    """0 or 1/(1-p) per element of ``x`` (its shape and dtype), from 16 random bits an element."""
    drop = _dropped(p)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
    bits.random_(-(2**63), None)  # 64 uniform random bits per draw
    u16 = bits.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
    return (u16 >= drop - 32768).to(x.dtype).mul_(_kept_scale(p))


#: Masks drawn by compiled code. The operator below counts into it, which makes it a mutating
#: operator: AOTAutograd's common-subexpression pass merges identical calls of pure operators
#: (two dropouts of one tensor, as in R-Drop, would share one mask), never of mutating ones.
COMPILED_MASK_DRAWS = torch.zeros((), dtype=torch.int64)


@torch.library.custom_op("clozelab::dropout_keep_mask", mutates_args=("draws",), device_types="cpu")
def _keep_mask_op(x: Tensor, p: float, draws: Tensor) -> Tensor:
    """``_keep_mask`` as one opaque operator for code that ``torch.compile`` traces."""
    draws.add_(1)
    return _keep_mask(x, p)


@_keep_mask_op.register_fake
def _(x: Tensor, p: float, draws: Tensor) -> Tensor:
    return torch.empty_like(x)


def keep_mask(x: Tensor, p: float) -> Tensor:
    """Dropout's keep mask for ``x`` on CPU: 0 (probability ``p``) or 1/(1-p), in ``x``'s dtype.

    Traced by ``torch.compile``, the same draws go through the opaque operator
    ``clozelab::dropout_keep_mask``: inductor calls it as it is and fuses the products around it,
    instead of drawing every element from its own CPU generator (which made a compiled T5 step
    1.6x slower than the eager one)."""
    if torch.compiler.is_compiling():
        return _keep_mask_op(x.detach(), p, COMPILED_MASK_DRAWS)
    return _keep_mask(x, p)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p).

    On CPU the keep mask comes from 16 random bits per element, drawn four at a time from one
    64-bit draw of the default generator (``keep_mask``, compiled code included); that is about
    4x faster than ``F.dropout``, whose per-element Bernoulli draws cost more than the layer's
    LayerNorm and residual together. The probability is quantised to a multiple of 1/65536
    (0.1 -> 0.100006) and the scale uses the quantised value, so the output stays unbiased.
    Other devices use ``F.dropout``.
    """
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    if _dropped(p) == 0:
        return x
    return x * keep_mask(x, p)  # autograd saves the mask only: backward is grad * mask


class _ReluDropout(torch.autograd.Function):
    """``dropout(relu(x))`` on CPU that keeps only its output for backward.

    Where the output is positive, relu passed ``x`` and the mask kept it, so the local gradient
    is exactly the kept scale 1/(1-p); everywhere else it is 0. Backward therefore needs neither
    the mask nor relu's boolean mask (autograd of the two ops keeps both), and the output is kept
    anyway by the matrix product that reads it next. The 0/1 mask is ``sign(out)`` as floats:
    compiled CPU code stores booleans at about a sixth of the speed of floats."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        out = torch.relu(x).mul_(keep_mask(x, p))
        ctx.scale = _kept_scale(p)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        (out,) = ctx.saved_tensors
        return grad * out.sign().mul_(ctx.scale), None


def relu_dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``dropout(relu(x), p)``: the same draws and values as the two calls, less memory and work
    on CPU (``_ReluDropout``)."""
    if not training or p <= 0.0 or x.device.type != "cpu" or _dropped(p) == 0:
        return dropout(torch.relu(x), p, training)
    return _ReluDropout.apply(x, p)


class Dropout(nn.Module):
    """``nn.Dropout`` with the CPU fast path of ``dropout``."""

    def __init__(self, p: float = 0.1):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise config_error(
                "model.dropout", p, "a dropout probability must be in [0, 1)", "use 0.1"
            )
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


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
