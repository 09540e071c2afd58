"""Weight exchange with HF ``T5ForConditionalGeneration`` and ``BartForConditionalGeneration``.

``param_map(embedding, encoder, decoder)`` lists, for the decoder's ``layout`` ("t5" or "bart"),
every HF key with our tensor or a row-block view of it (the fused query/key/value projection
splits into the three HF projections, the cross-attention key/value into two), so reading a
view exports and copying into it imports. ``to_hf_state_dict`` adds the tied aliases HF state
dicts carry (``encoder.embed_tokens``, ``decoder.embed_tokens``, ``lm_head``: all the shared
table); ``from_hf_state_dict`` copies an HF state dict in and reports what was missing or left
over; ``hf_config_dict`` / ``components_from_hf_config`` write and read ``config.json``.

Layouts: T5 = ``embedding=t5 encoder=t5 decoder=t5`` (v1.0: ReLU, tied and scaled output; the
gated v1.1 feed-forward is refused); BART = ``embedding=bart encoder=post_ln decoder=bart``
(LayerNorm epsilon 1e-5, as HF hard-codes it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from clozelab.core.errors import ClozelabError, config_error
from clozelab.model.bart import BartDecoder, BartEmbeddings
from clozelab.model.encoder import TransformerEncoder
from clozelab.model.layers import HF_ACTIVATION_NAMES, canonical_activation
from clozelab.model.t5 import T5Decoder, T5Embeddings, T5Encoder

_QKV = ("q", "k", "v")
#: HF keys that alias the shared word table.
TIED = {
    "t5": ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"),
    "bart": (
        "model.encoder.embed_tokens.weight",
        "model.decoder.embed_tokens.weight",
        "lm_head.weight",
    ),
}
SHARED = {"t5": "shared.weight", "bart": "model.shared.weight"}
LAYOUTS = {
    "t5": (T5Embeddings, T5Encoder, T5Decoder),
    "bart": (BartEmbeddings, TransformerEncoder, BartDecoder),
}
ARCHITECTURES = {"t5": "T5ForConditionalGeneration", "bart": "BartForConditionalGeneration"}


def layout_of(embedding: nn.Module, encoder: nn.Module, decoder: nn.Module) -> str:
    """ "t5" or "bart" when the three modules form that HF model; a ClozelabError otherwise."""
    for name, classes in LAYOUTS.items():
        if all(type(m) is c for m, c in zip((embedding, encoder, decoder), classes)):
            return name
    found = "/".join(type(m).__name__ for m in (embedding, encoder, decoder))
    raise config_error(
        "embedding/encoder/decoder",
        found,
        "only T5 (T5Embeddings/T5Encoder/T5Decoder) and BART (BartEmbeddings/post-LN "
        "TransformerEncoder/BartDecoder) map onto HF encoder-decoder checkpoints",
        "use embedding=t5 encoder=t5 decoder=t5 or embedding=bart encoder=post_ln decoder=bart",
    )


def _blocks(weight: Tensor, names: tuple[str, ...], size: int) -> dict[str, Tensor]:
    return {name: weight[j * size : (j + 1) * size] for j, name in enumerate(names)}


def _t5_map(embedding: T5Embeddings, encoder: T5Encoder, decoder: T5Decoder) -> dict[str, Tensor]:
    out = {"shared.weight": embedding.word_embeddings.weight}
    for prefix, stack in (("encoder", encoder), ("decoder", decoder)):
        out[f"{prefix}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
            stack.position_bias.embedding.weight
        )
        for i, layer in enumerate(stack.layers):
            p = f"{prefix}.block.{i}.layer."
            inner = layer.attention.num_heads * layer.attention.head_size
            for name, view in _blocks(layer.attention.qkv.weight, _QKV, inner).items():
                out[f"{p}0.SelfAttention.{name}.weight"] = view
            out[f"{p}0.SelfAttention.o.weight"] = layer.attention.out.weight
            out[f"{p}0.layer_norm.weight"] = layer.attention_norm.weight
            ff = 1
            if layer.cross_attention is not None:
                cross = layer.cross_attention
                out[f"{p}1.EncDecAttention.q.weight"] = cross.q.weight
                for name, view in _blocks(cross.kv.weight, ("k", "v"), inner).items():
                    out[f"{p}1.EncDecAttention.{name}.weight"] = view
                out[f"{p}1.EncDecAttention.o.weight"] = cross.out.weight
                out[f"{p}1.layer_norm.weight"] = layer.cross_norm.weight
                ff = 2
            out[f"{p}{ff}.DenseReluDense.wi.weight"] = layer.feed_forward.fc1.weight
            out[f"{p}{ff}.DenseReluDense.wo.weight"] = layer.feed_forward.fc2.weight
            out[f"{p}{ff}.layer_norm.weight"] = layer.output_norm.weight
        out[f"{prefix}.final_layer_norm.weight"] = stack.final_norm.weight
    return out


def _bart_attention(p: str, attention: nn.Module, size: int, cross: bool = False) -> dict:
    """``{p}q_proj.weight`` ... ``{p}out_proj.bias`` of one attention (fused rows split)."""
    if cross:
        weights = {"q": attention.q.weight, **_blocks(attention.kv.weight, ("k", "v"), size)}
        biases = {"q": attention.q.bias, **_blocks(attention.kv.bias, ("k", "v"), size)}
    else:
        weights = _blocks(attention.qkv.weight, _QKV, size)
        biases = _blocks(attention.qkv.bias, _QKV, size)
    out = {}
    for name in _QKV:
        out[f"{p}{name}_proj.weight"], out[f"{p}{name}_proj.bias"] = weights[name], biases[name]
    out[f"{p}out_proj.weight"], out[f"{p}out_proj.bias"] = attention.out.weight, attention.out.bias
    return out


def _norm(key: str, norm: nn.LayerNorm) -> dict[str, Tensor]:
    return {f"{key}.weight": norm.weight, f"{key}.bias": norm.bias}


def _bart_map(
    embedding: BartEmbeddings, encoder: TransformerEncoder, decoder: BartDecoder
) -> dict[str, Tensor]:
    H = encoder.hidden_size
    out = {
        "model.shared.weight": embedding.word_embeddings.weight,
        "model.encoder.embed_positions.weight": embedding.positions.table.weight,
        **_norm("model.encoder.layernorm_embedding", embedding.positions.norm),
        "model.decoder.embed_positions.weight": decoder.positions.table.weight,
        **_norm("model.decoder.layernorm_embedding", decoder.positions.norm),
        "final_logits_bias": decoder.final_logits_bias[None],  # (1, V) view
    }
    for i, layer in enumerate(encoder.layers):
        p = f"model.encoder.layers.{i}."
        out.update(_bart_attention(f"{p}self_attn.", layer.attention, H))
        out.update(_norm(f"{p}self_attn_layer_norm", layer.attention_norm))
        out.update(_bart_ffn(p, layer))
    for i, layer in enumerate(decoder.layers):
        p = f"model.decoder.layers.{i}."
        size = layer.attention.num_heads * layer.attention.head_size
        out.update(_bart_attention(f"{p}self_attn.", layer.attention, size))
        out.update(_norm(f"{p}self_attn_layer_norm", layer.attention_norm))
        out.update(_bart_attention(f"{p}encoder_attn.", layer.cross_attention, size, True))
        out.update(_norm(f"{p}encoder_attn_layer_norm", layer.cross_norm))
        out.update(_bart_ffn(p, layer))
    return out


def _bart_ffn(p: str, layer: nn.Module) -> dict[str, Tensor]:
    ff = layer.feed_forward
    return {
        f"{p}fc1.weight": ff.fc1.weight,
        f"{p}fc1.bias": ff.fc1.bias,
        f"{p}fc2.weight": ff.fc2.weight,
        f"{p}fc2.bias": ff.fc2.bias,
        **_norm(f"{p}final_layer_norm", layer.output_norm),
    }


def param_map(embedding: nn.Module, encoder: nn.Module, decoder: nn.Module) -> dict[str, Tensor]:
    """HF key -> our tensor (or a view of it), tied aliases left out."""
    layout = layout_of(embedding, encoder, decoder)
    build = _t5_map if layout == "t5" else _bart_map
    return build(embedding, encoder, decoder)


def to_hf_state_dict(
    embedding: nn.Module, encoder: nn.Module, decoder: nn.Module, include_tied: bool = True
) -> dict[str, Tensor]:
    """Our weights as a ``T5ForConditionalGeneration`` / ``BartForConditionalGeneration`` dict."""
    layout = layout_of(embedding, encoder, decoder)
    state = {
        k: v.detach().clone().contiguous()
        for k, v in param_map(embedding, encoder, decoder).items()
    }
    if include_tied:
        for key in TIED[layout]:
            state[key] = state[SHARED[layout]].clone()
    return state


def from_hf_state_dict(
    state: Mapping[str, Tensor], embedding: nn.Module, encoder: nn.Module, decoder: nn.Module
) -> dict[str, list[str]]:
    """Copy an HF T5/BART state dict into our modules; returns ``{"missing", "unexpected"}``.

    A shape mismatch, or an ``lm_head`` that is not the shared table (untied v1.1 heads), raises
    a ClozelabError."""
    layout = layout_of(embedding, encoder, decoder)
    targets = param_map(embedding, encoder, decoder)
    shared = state.get(SHARED[layout])
    head = state.get("lm_head.weight")
    if shared is not None and head is not None and not torch.equal(shared, head):
        raise config_error(
            "checkpoint",
            "lm_head.weight",
            "the output projection is not tied to the shared word table (T5 v1.1 / untied)",
            "use a checkpoint with tie_word_embeddings=true; clozelab ties them",
        )
    missing = [k for k in targets if k not in state]
    unexpected = [k for k in state if k not in targets and k not in TIED[layout]]
    with torch.no_grad():
        for key, target in targets.items():
            if key not in state:
                continue
            value = state[key]
            if tuple(value.shape) != tuple(target.shape):
                raise config_error(
                    f"checkpoint[{key}]",
                    tuple(value.shape),
                    f"this model expects {tuple(target.shape)}",
                    "build the model from the checkpoint's config.json",
                )
            target.copy_(value.to(target.dtype))
    return {"missing": missing, "unexpected": unexpected}


def _hf_activation(name: str) -> str:
    return HF_ACTIVATION_NAMES[canonical_activation(name)]


def hf_config_dict(
    embedding: nn.Module,
    encoder: nn.Module,
    decoder: nn.Module,
    pad_token_id: int = 0,
    eos_token_id: int = 1,
    bos_token_id: int | None = None,
) -> dict[str, Any]:
    """The ``config.json`` of the HF model these modules form."""
    layout = layout_of(embedding, encoder, decoder)
    vocab = embedding.word_embeddings.weight.shape[0]
    common = {
        "architectures": [ARCHITECTURES[layout]],
        "model_type": layout,
        "vocab_size": vocab,
        "is_encoder_decoder": True,
        "pad_token_id": pad_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": "float32",
    }
    if layout == "t5":
        layer = encoder.layers[0]
        return {
            **common,
            "d_model": encoder.hidden_size,
            "d_kv": layer.attention.head_size,
            "d_ff": encoder.intermediate_size,
            "num_layers": encoder.num_layers,
            "num_decoder_layers": decoder.num_layers,
            "num_heads": encoder.num_heads,
            "relative_attention_num_buckets": encoder.num_buckets,
            "relative_attention_max_distance": encoder.max_distance,
            "dropout_rate": encoder.dropout_prob,
            "layer_norm_epsilon": encoder.layer_norm_eps,
            "feed_forward_proj": _hf_activation(encoder.activation),
            "tie_word_embeddings": True,
            "decoder_start_token_id": pad_token_id,
            "initializer_factor": 1.0,
        }
    for name, eps in (
        ("encoder", encoder.layer_norm_eps),
        ("decoder", decoder.layer_norm_eps),
        ("embedding", embedding.layer_norm_eps),
    ):
        if abs(eps - 1e-5) > 1e-12:
            raise config_error(
                f"{name}.layer_norm_eps",
                eps,
                "HF BART's LayerNorms use epsilon 1e-5",
                "set model.layer_norm_eps=1e-5 (experiment=bart does)",
            )
    return {
        **common,
        "d_model": encoder.hidden_size,
        "encoder_layers": encoder.num_layers,
        "decoder_layers": decoder.num_layers,
        "encoder_attention_heads": encoder.num_heads,
        "decoder_attention_heads": decoder.num_heads,
        "encoder_ffn_dim": encoder.intermediate_size,
        "decoder_ffn_dim": decoder.intermediate_size,
        "activation_function": _hf_activation(encoder.activation),
        "dropout": encoder.dropout,
        "attention_dropout": encoder.attention_dropout,
        "activation_dropout": 0.0,
        "max_position_embeddings": embedding.max_position_embeddings,
        "scale_embedding": embedding.scale_embedding,
        "init_std": 0.02,
        "bos_token_id": bos_token_id if bos_token_id is not None else eos_token_id,
        "decoder_start_token_id": eos_token_id,
        "forced_eos_token_id": eos_token_id,
        "tie_word_embeddings": True,
    }


def components_from_hf_config(config: Mapping[str, Any]) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Fresh (embedding, encoder, decoder) shaped as the HF T5/BART ``config.json`` says."""
    kind = config.get("model_type")
    vocab = int(config["vocab_size"])
    if kind == "t5":
        proj = str(config.get("feed_forward_proj", "relu"))
        if proj.startswith("gated"):
            raise config_error(
                "config.json feed_forward_proj",
                proj,
                "the gated feed-forward of T5 v1.1 is not implemented in clozelab",
                "use a T5 v1.0 layout checkpoint (feed_forward_proj=relu or gelu)",
            )
        heads, size = int(config["num_heads"]), int(config["d_model"])
        kw = dict(
            hidden_size=size,
            num_heads=heads,
            intermediate_size=int(config["d_ff"]),
            dropout=float(config.get("dropout_rate", 0.1)),
            attention_dropout=float(config.get("dropout_rate", 0.1)),
            activation=canonical_activation(proj),
            layer_norm_eps=float(config.get("layer_norm_epsilon", 1e-6)),
            relative_attention_num_buckets=int(config.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(config.get("relative_attention_max_distance", 128)),
            head_size=int(config.get("d_kv", size // heads)),
        )
        layers = int(config["num_layers"])
        decoder_layers = int(config.get("num_decoder_layers") or layers)
        return (
            T5Embeddings(vocab, size, kw["dropout"]),
            T5Encoder(num_layers=layers, **kw),
            T5Decoder(num_layers=decoder_layers, **kw),
        )
    if kind == "bart":
        for flag in ("normalize_before", "add_final_layer_norm", "add_bias_logits"):
            if config.get(flag):
                raise config_error(
                    f"config.json {flag}",
                    True,
                    "that BART/mBART variant is not implemented in clozelab",
                    "use a BART checkpoint (facebook/bart-* layout)",
                )
        size = int(config["d_model"])
        activation = canonical_activation(config.get("activation_function", "gelu"))
        dropout = float(config.get("dropout", 0.1))
        attention_dropout = float(config.get("attention_dropout", 0.0))
        positions = int(config.get("max_position_embeddings", 1024))
        scale = bool(config.get("scale_embedding", False))
        std = float(config.get("init_std", 0.02))
        embedding = BartEmbeddings(
            vocab, size, positions, 1e-5, dropout, int(config.get("pad_token_id", 1)), std, scale
        )
        encoder = TransformerEncoder(
            size,
            int(config["encoder_layers"]),
            int(config["encoder_attention_heads"]),
            int(config["encoder_ffn_dim"]),
            dropout,
            attention_dropout,
            activation,
            1e-5,
            std,
        )
        decoder = BartDecoder(
            size,
            int(config["decoder_layers"]),
            int(config["decoder_attention_heads"]),
            int(config["decoder_ffn_dim"]),
            vocab,
            dropout,
            attention_dropout,
            activation,
            1e-5,
            positions,
            std,
            scale,
        )
        return embedding, encoder, decoder
    raise ClozelabError(
        f"config.json model_type={kind!r}: not an encoder-decoder clozelab can load. Fix: pass a "
        "T5ForConditionalGeneration or BartForConditionalGeneration directory."
    )


__all__ = [
    "components_from_hf_config",
    "from_hf_state_dict",
    "hf_config_dict",
    "layout_of",
    "param_map",
    "to_hf_state_dict",
]
