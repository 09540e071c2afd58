"""encoder.attention_backend on CPU: math and flash agree with auto; unavailable kernels fall
back to auto with a warning; unknown names are config errors."""

from __future__ import annotations

import logging

import pytest
import torch

import clozelab.model.attention as attention_module
import clozelab.model.encoder as encoder_module
from clozelab.core.errors import ClozelabError
from clozelab.model.attention import ATTENTION_BACKENDS, check_backend
from clozelab.model.encoder import TransformerEncoder
from clozelab.model.encoder_variants import TransformerStack

H, L, A, FF = 32, 2, 4, 37


def build(backend: str, cls=TransformerEncoder, **kw):
    torch.manual_seed(0)
    return cls(H, L, A, FF, attention_backend=backend, **kw).eval()


def inputs(padded: bool):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 10, H, generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    if padded:
        mask[1, 6:], mask[2, 2:] = 0, 0
    return x, mask


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("backend", ["math", "flash"])  # the kernels a CPU has
def test_cpu_kernels_agree_with_auto(backend, padded):
    x, mask = inputs(padded)
    with torch.no_grad():
        ref = build("auto")(x, mask).last_hidden_state
        got = build(backend)(x, mask).last_hidden_state
    real = mask.bool()
    assert (got - ref)[real].abs().max().item() <= 1e-6


@pytest.mark.parametrize("backend", ["efficient", "cudnn"])
def test_unavailable_kernel_warns_once_and_falls_back(backend, caplog, monkeypatch):
    monkeypatch.setattr(attention_module, "_AVAILABLE", {})  # what earlier tests probed
    x, mask = inputs(padded=True)
    with torch.no_grad():
        ref = build("auto")(x, mask).last_hidden_state
        encoder = build(backend, unpad=True)  # unpadded: the packed path falls back too
        with caplog.at_level(logging.WARNING, logger="clozelab.model.attention"):
            got = encoder(x, mask).last_hidden_state
            encoder(x, mask)
    warnings = [r for r in caplog.records if f"attention_backend={backend}" in r.message]
    assert len(warnings) == 1 and "falling back" in warnings[0].message
    real = mask.bool()
    assert (got - ref)[real].abs().max().item() <= 1e-6


def test_flash_on_nested_inputs_names_the_fallback(caplog, monkeypatch):
    monkeypatch.setattr(attention_module, "_AVAILABLE", {})
    x, mask = inputs(padded=True)
    encoder = build("flash", unpad=True, unpad_attention="nested")
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="clozelab.model.attention"):
        got = encoder(x, mask).last_hidden_state
        ref = build("auto")(x, mask).last_hidden_state
    assert any("nested" in r.message for r in caplog.records)  # no CPU flash for jagged inputs
    assert (got - ref)[mask.bool()].abs().max().item() <= 1e-5


def test_explicit_backend_trains_through_sdpa(monkeypatch):
    """auto keeps the fast CPU-dropout math in training; an explicit kernel goes through SDPA."""
    calls = []
    original = encoder_module.attention_with_cpu_dropout

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(encoder_module, "attention_with_cpu_dropout", spy)
    x, mask = inputs(padded=True)
    build("auto").train()(x, mask)
    assert calls
    calls.clear()
    out = build("math").train()(x, mask).last_hidden_state
    assert not calls
    out.sum().backward()


def test_variants_take_the_backend_and_names_are_checked():
    stack = build("math", TransformerStack, norm="pre")
    assert all(layer.attention.attention_backend == "math" for layer in stack.layers)
    assert set(ATTENTION_BACKENDS) == {"auto", "flash", "efficient", "math", "cudnn"}
    assert check_backend("flash") == "flash"
    with pytest.raises(ClozelabError, match=r"encoder.attention_backend='flsh'.*auto"):
        TransformerEncoder(H, L, A, FF, attention_backend="flsh")
