"""Which SDPA kernel the encoders' attention runs on (``encoder.attention_backend``).

``auto`` leaves the choice to PyTorch (and, on CPU in training with attention dropout, to
clozelab's own math with its cheaper dropout; see ``clozelab.model.encoder``). ``flash``,
``efficient``, ``math`` and ``cudnn`` restrict ``F.scaled_dot_product_attention`` to that kernel
with ``torch.nn.attention.sdpa_kernel``.

A kernel that cannot run the call at hand is not an error: the encoder warns once per situation
(device, dtype, padding mask or not, dropout or not, layout) and falls back to ``auto``, so a run
configured for a GPU still loads and evaluates on a CPU. Availability is found by one probe
call on a tiny input of the same kind, cached per situation. What runs where:

- CPU: ``math`` and ``flash`` (PyTorch's CPU flash kernel, with or without a mask); ``auto``
  picks ``flash``. ``efficient`` and ``cudnn`` fall back.
- CUDA, no padding in the batch: ``flash`` (fp16/bf16), ``efficient``, ``cudnn``, ``math``.
- CUDA, a padded batch: the flash kernel takes no attention mask, so ``flash`` falls back and
  ``auto`` uses the memory-efficient kernel (or cuDNN), which accept the padding mask. To run
  flash on padded batches, drop the padding instead: ``encoder.unpad=true
  encoder.unpad_attention=nested`` gives SDPA jagged (nested) tensors without a mask, which run on
  the flash / memory-efficient variable-length kernels.
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from clozelab.core.errors import config_error

log = logging.getLogger(__name__)

#: Config names -> PyTorch's kernels (None: PyTorch chooses).
ATTENTION_BACKENDS: dict[str, SDPBackend | None] = {
    "auto": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}

#: (backend, device type, dtype, head size, masked, dropout, nested) -> can the kernel run it.
_AVAILABLE: dict[tuple, bool] = {}


def check_backend(name: str, key: str = "encoder.attention_backend") -> str:
    """``name`` if it is a known backend; a ClozelabError naming ``key`` otherwise."""
    if name not in ATTENTION_BACKENDS:
        choices = list(ATTENTION_BACKENDS)
        raise config_error(key, name, "unknown SDPA backend", f"use one of {choices}")
    return name


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the attention inputs will have: the autocast dtype when autocast is on."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _probe(
    backend: SDPBackend,
    device: torch.device,
    dtype,
    head_size: int,
    masked: bool,
    dropout: float,
    nested: bool,
) -> bool:
    """Does ``backend`` run an SDPA call of this kind? One call on a [1 or 2, 1, 8, hs] input."""
    shape = (2, 1, 8, head_size)
    q = torch.zeros(shape, dtype=dtype, device=device)
    mask = None
    if nested:
        values = torch.zeros(12, 1, head_size, dtype=dtype, device=device)
        offsets = torch.tensor([0, 8, 12], device=device)
        q = torch.nested.nested_tensor_from_jagged(values, offsets).transpose(1, 2)
    elif masked:
        mask = torch.ones(2, 1, 1, 8, dtype=torch.bool, device=device)
        mask[1, ..., 4:] = False
    try:
        with sdpa_kernel([backend]), torch.autocast(device.type, enabled=False):
            F.scaled_dot_product_attention(q, q, q, attn_mask=mask, dropout_p=dropout)
    except RuntimeError:
        return False
    return True


def attention_context(
    name: str,
    like: Tensor,
    head_size: int,
    masked: bool,
    dropout: float,
    nested: bool = False,
):
    """A context manager restricting SDPA to backend ``name`` for calls like the ones the
    encoder will make on ``like``'s device; a null context for ``auto`` and, with a warning
    (once per situation), when the kernel cannot run them."""
    backend = ATTENTION_BACKENDS[name]
    if backend is None:
        return contextlib.nullcontext()
    if torch.compiler.is_compiling():  # traced as a whole: no probe calls inside the graph
        return sdpa_kernel([backend])
    dtype = compute_dtype(like)
    key = (name, like.device.type, dtype, head_size, masked, dropout > 0, nested)
    if key not in _AVAILABLE:
        _AVAILABLE[key] = _probe(backend, like.device, dtype, head_size, masked, dropout, nested)
        if not _AVAILABLE[key]:
            what = (
                "nested (unpadded) inputs"
                if nested
                else ("a padding mask" if masked else "no mask")
            )
            log.warning(
                "encoder.attention_backend=%s: PyTorch's %s kernel cannot run attention on %s "
                "(%s, head size %d, %s, dropout %s); falling back to attention_backend=auto "
                "(PyTorch's own choice) for these calls.%s",
                name,
                name,
                like.device.type,
                str(dtype).replace("torch.", ""),
                head_size,
                what,
                dropout,
                " With padded batches flash needs encoder.unpad=true "
                "encoder.unpad_attention=nested."
                if name == "flash" and masked
                else "",
            )
    return sdpa_kernel([backend]) if _AVAILABLE[key] else contextlib.nullcontext()


__all__ = ["ATTENTION_BACKENDS", "attention_context", "check_backend", "compute_dtype"]
