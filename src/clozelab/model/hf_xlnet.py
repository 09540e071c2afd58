"""Weight exchange with HF transformers XLNet checkpoints (``XLNetLMHeadModel`` / ``XLNetModel``).

Our ``XLNetEncoder`` fuses the query, key and value projections into one ``Linear(H, 3H)`` and
keeps the position-key and output projections as ``Linear`` layers; HF keeps each as a
[d_model, n_head, d_head] tensor. The maps are exact reshapes:

    q/k/v/r (HF [H, nh, hs])  ->  Linear weight [nh*hs, H] = q.reshape(H, H).T
    o       (HF [H, nh, hs])  ->  Linear weight [H, nh*hs] = o.reshape(H, H)

``lm_loss.weight`` is tied to the word table (XLNet ties them); ``lm_loss.bias`` is the PLM
objective's bias. ``xlnet_config_dict`` writes the matching ``config.json`` and
``kwargs_from_xlnet_config`` reads one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from clozelab.core.errors import ClozelabError, config_error
from clozelab.model.layers import HF_ACTIVATION_NAMES, canonical_activation

BODY_PREFIX = "transformer."
WORD_KEY = BODY_PREFIX + "word_embedding.weight"


def _hf_layout(embedding: nn.Module, encoder: nn.Module, bias: Tensor | None):
    """HF key -> (our tensor, to_hf, from_hf) converters, for every weight."""
    H, nh = encoder.hidden_size, encoder.num_heads
    hs = H // nh

    def proj_to(w):  # Linear weight [nh*hs, H] -> HF [H, nh, hs]
        return w.t().reshape(H, nh, hs)

    def proj_from(t):
        return t.reshape(H, H).t()

    def out_to(w):  # Linear weight [H, nh*hs] -> HF [H, nh, hs]
        return w.reshape(H, nh, hs)

    def out_from(t):
        return t.reshape(H, H)

    def same(t):
        return t

    layout: dict[str, tuple] = {
        WORD_KEY: (embedding.word_embeddings.weight, same, same),
        "transformer.mask_emb": (
            encoder.mask_emb,
            lambda t: t.view(1, 1, H),
            lambda t: t.reshape(H),
        ),
    }
    for i, layer in enumerate(encoder.layers):
        a, p = layer.attention, f"transformer.layer.{i}."
        for j, name in enumerate("qkv"):
            rows = a.qkv.weight[j * H : (j + 1) * H]  # a view: copying into it writes the weight
            layout[p + f"rel_attn.{name}"] = (rows, proj_to, proj_from)
        layout[p + "rel_attn.r"] = (a.r.weight, proj_to, proj_from)
        layout[p + "rel_attn.o"] = (a.o.weight, out_to, out_from)
        for name in ("r_r_bias", "r_s_bias", "r_w_bias", "seg_embed"):
            layout[p + f"rel_attn.{name}"] = (getattr(a, name), same, same)
        for ours, theirs in (
            (a.norm, "rel_attn.layer_norm"),
            (layer.output_norm, "ff.layer_norm"),
            (layer.feed_forward.fc1, "ff.layer_1"),
            (layer.feed_forward.fc2, "ff.layer_2"),
        ):
            layout[p + theirs + ".weight"] = (ours.weight, same, same)
            layout[p + theirs + ".bias"] = (ours.bias, same, same)
    if bias is not None:
        layout["lm_loss.bias"] = (bias, same, same)
    return layout


def _check(embedding: nn.Module, encoder: nn.Module) -> None:
    # XLNet's input is the word table alone: an embedding with more state (learned positions,
    # segments, a LayerNorm: embedding=bert) would be dropped from the export without a word.
    word_only = set(embedding.state_dict()) == {"word_embeddings.weight"}
    if not hasattr(encoder, "mask_emb") or not word_only:
        raise config_error(
            "embedding/encoder",
            f"{type(embedding).__name__}/{type(encoder).__name__}",
            "HF XLNet weights map only onto the word-only embedding + XLNetEncoder",
            "use experiment=xlnet (embedding=word encoder=xlnet)",
        )


def to_hf_xlnet_state_dict(
    embedding: nn.Module,
    encoder: nn.Module,
    lm_bias: Tensor | None = None,
    include_tied: bool = True,
) -> dict[str, Tensor]:
    """Our weights as an ``XLNetLMHeadModel`` state dict (``XLNetModel`` body keys with the
    ``transformer.`` prefix; ``lm_loss.bias`` when ``lm_bias`` is given, and ``lm_loss.weight``,
    a copy of the word table, unless ``include_tied`` is False, as HF's own saves leave it out)."""
    _check(embedding, encoder)
    state = {}
    for key, (tensor, to_hf, _) in _hf_layout(embedding, encoder, lm_bias).items():
        state[key] = to_hf(tensor.detach()).contiguous().clone()
    if lm_bias is not None and include_tied:
        state["lm_loss.weight"] = state[WORD_KEY].clone()
    return state


@torch.no_grad()
def from_hf_xlnet_state_dict(
    state: Mapping[str, Tensor],
    embedding: nn.Module,
    encoder: nn.Module,
    lm_bias: Tensor | None = None,
    strict: bool = False,
) -> dict[str, list[str]]:
    """Copy an HF XLNet state dict (``XLNetLMHeadModel`` keys, or ``XLNetModel`` keys without
    the prefix) into our modules, in place; ``{"missing": [...], "unexpected": [...]}`` in HF
    names. A shape mismatch always raises; ``strict`` raises on either list too."""
    _check(embedding, encoder)
    normalised = {
        (k if k.startswith(("transformer.", "lm_loss.")) else BODY_PREFIX + k): v
        for k, v in state.items()
    }
    used, missing = set(), []
    for key, (tensor, _, from_hf) in _hf_layout(embedding, encoder, lm_bias).items():
        value = normalised.get(key)
        if value is None:
            missing.append(key)
            continue
        converted = from_hf(value)
        if tuple(converted.shape) != tuple(tensor.shape):
            raise config_error(
                f"checkpoint[{key}]",
                tuple(value.shape),
                "does not fit this model's sizes",
                "build the model with the checkpoint's config.json sizes",
            )
        tensor.copy_(converted)
        used.add(key)
    if "lm_loss.weight" in normalised and lm_bias is not None:
        used.add("lm_loss.weight")  # tied to the word table
    unexpected = [k for k in normalised if k not in used]
    if strict and (missing or unexpected):
        raise ClozelabError(
            f"checkpoint does not match the model: missing={missing}, unexpected={unexpected}. "
            "Fix: load with strict=False or build the PLM head (objective=[plm])"
        )
    return {"missing": missing, "unexpected": unexpected}


def xlnet_config_dict(
    embedding: nn.Module,
    encoder: nn.Module,
    *,
    with_lm_head: bool = True,
    initializer_range: float = 0.02,
    **extra: Any,
) -> dict[str, Any]:
    """An HF ``config.json`` dict (``model_type`` "xlnet") for these modules."""
    _check(embedding, encoder)
    config: dict[str, Any] = {
        "architectures": ["XLNetLMHeadModel" if with_lm_head else "XLNetModel"],
        "model_type": "xlnet",
        "vocab_size": embedding.word_embeddings.num_embeddings,
        "d_model": encoder.hidden_size,
        "n_layer": encoder.num_layers,
        "n_head": encoder.num_heads,
        "d_head": encoder.hidden_size // encoder.num_heads,
        "d_inner": encoder.intermediate_size,
        "ff_activation": HF_ACTIVATION_NAMES[encoder.activation],
        "attn_type": "bi",
        "dropout": encoder.dropout_p,
        "layer_norm_eps": encoder.layer_norm_eps,
        "initializer_range": initializer_range,
        "clamp_len": encoder.clamp_len,
        "mem_len": encoder.mem_len or None,
        "bi_data": False,
        "same_length": False,
        "tie_word_embeddings": True,
    }
    if getattr(embedding, "pad_token_id", None) is not None:
        config["pad_token_id"] = embedding.pad_token_id
    config.update(extra)
    return config


def kwargs_from_xlnet_config(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Constructor kwargs of ``WordEmbeddings`` (``clozelab.model.char_cnn``; no padding row, as
    XLNet's table), ``XLNetEncoder`` and ``PermutationLM`` for an HF XLNet ``config.json`` dict;
    a ClozelabError for what the encoder does not compute."""
    if config.get("model_type") != "xlnet":
        raise config_error(
            "config.json model_type",
            config.get("model_type"),
            "not XLNet",
            "load an XLNet checkpoint",
        )
    for key, supported in (("attn_type", "bi"), ("bi_data", False), ("same_length", False)):
        if config.get(key, supported) != supported:
            raise config_error(
                f"config.json {key}",
                config[key],
                "not supported",
                f"use {key}={supported!r} (XLNet's pre-training default)",
            )
    H, n = config["d_model"], config["n_head"]
    if config.get("d_head", H // n) * n != H:
        raise config_error(
            "config.json d_head",
            config.get("d_head"),
            "d_head * n_head != d_model",
            "use d_head = d_model / n_head",
        )
    act = canonical_activation(config.get("ff_activation", "gelu"), key="config.json ff_activation")
    dropout, std = config.get("dropout", 0.1), config.get("initializer_range", 0.02)
    return {
        "embedding": {
            "vocab_size": config["vocab_size"],
            "hidden_size": H,
            "dropout": dropout,
            "pad_token_id": None,  # XLNet's table has no padding row
            "initializer_range": std,
        },
        "encoder": {
            "hidden_size": H,
            "num_layers": config["n_layer"],
            "num_heads": n,
            "intermediate_size": config["d_inner"],
            "dropout": dropout,
            "activation": act,
            "layer_norm_eps": config.get("layer_norm_eps", 1e-12),
            "initializer_range": std,
            "clamp_len": config.get("clamp_len", -1),
            "mem_len": config.get("mem_len") or 0,
        },
        "plm": {"vocab_size": config["vocab_size"]},
    }


def xlnet_modules(config: Mapping[str, Any]) -> tuple[nn.Module, nn.Module]:
    """The word-only embedding and ``XLNetEncoder`` an HF XLNet ``config.json`` describes
    (randomly initialised; load the weights with ``from_hf_xlnet_state_dict``)."""
    from clozelab.model.char_cnn import WordEmbeddings
    from clozelab.model.xlnet import XLNetEncoder

    kwargs = kwargs_from_xlnet_config(config)
    return WordEmbeddings(**kwargs["embedding"]), XLNetEncoder(**kwargs["encoder"])
