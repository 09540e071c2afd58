"""Weight exchange with HF transformers BERT checkpoints (SPECS §15), and ERNIE ones.

``to_hf_state_dict`` writes ``BertForPreTraining`` keys (``bert.`` prefix, the fused QKV split
into query/key/value, ``cls.predictions.*`` with the tied ``decoder.*`` aliases,
``bert.pooler.*`` and ``cls.seq_relationship.*`` from NSP). ``from_hf_state_dict`` reads such a
dict, a ``BertModel`` dict (no prefix, no heads) or a legacy one (``gamma``/``beta``, a persistent
``position_ids`` buffer), re-ties the decoder, and reports what was missing or left over.
``hf_config_dict`` writes the matching ``config.json`` and ``kwargs_from_hf_config`` reads one.

The components declare how they map (``Embedding.hf_layout``, ``Encoder.hf_layout``; a component
without one is refused, with its ``hf_export_refusal`` when it says why). The embedding decides
the family: HF ERNIE is HF BERT with the
``ernie.`` prefix and, with ``use_task_id``, a ``task_type_embeddings`` table summed into the
embeddings before their LayerNorm, exactly as ERNIE 2.0's task embedding (``TaskEmbeddings``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from clozelab.core.errors import ClozelabError, check_int, config_error
from clozelab.model.embeddings import BertEmbeddings, Embedding, HFEmbeddingLayout
from clozelab.model.embeddings_variants import TaskEmbeddings
from clozelab.model.encoder import HF_ENCODER_CONFIG, HFEncoderLayout
from clozelab.model.layers import canonical_activation

log = logging.getLogger(__name__)

BODY_PREFIX = "bert."
#: the HF families whose body is BERT's (``model_type`` -> the class name prefix of their
#: architectures); the body keys carry the ``model_type`` as prefix (``bert.``, ``ernie.``).
FAMILIES = {"bert": "Bert", "ernie": "Ernie"}
#: Keys HF checkpoints may carry that hold no weights (buffers); accepted and ignored.
IGNORED_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")


def _check_bert(
    embedding: nn.Module, encoder: nn.Module
) -> tuple[HFEmbeddingLayout, HFEncoderLayout]:
    """The HF layouts of ``embedding`` and ``encoder`` (their ``hf_layout`` hooks), or a
    ClozelabError saying why these modules are not an HF BERT-family body."""
    for key, module in (("encoder", encoder), ("embedding", embedding)):
        refusal = module.hf_export_refusal  # Encoder / Embedding hook
        if refusal is not None:
            reason, fix = refusal
            raise config_error(key, type(module).__name__, reason, fix)
    layout = embedding.hf_layout()  # Embedding hook: None when HF has no such embeddings
    layers = encoder.hf_layout()  # Encoder hook: None when HF BERT's layers do not map onto it
    if layout is None or layers is None:
        raise config_error(
            "embedding/encoder",
            f"{type(embedding).__name__}/{type(encoder).__name__}",
            "HF BERT weights map only onto BertEmbeddings (HF ERNIE's: TaskEmbeddings) + the "
            "post-LN TransformerEncoder, or components whose hf_layout() gives their HF tables",
            "use embedding=bert (or embedding=task for HF ERNIE) encoder=post_ln to import or "
            "export HF BERT checkpoints; a component of your own declares its HF tables in "
            "hf_layout() (or why it has none in hf_export_refusal)",
        )
    lacking = [k for k in HF_ENCODER_CONFIG if k not in layers.config]
    if lacking:
        raise config_error(
            "encoder",
            type(encoder).__name__,
            f"its hf_layout() config lacks the config.json entries {lacking}",
            f"give every key of clozelab.model.encoder.HF_ENCODER_CONFIG {list(HF_ENCODER_CONFIG)}",
        )
    if embedding.hidden_size != encoder.hidden_size:
        raise config_error(
            "model.hidden_size",
            f"{embedding.hidden_size} (embedding) vs {encoder.hidden_size} (encoder)",
            "BERT needs one hidden size",
            "give the embedding and the encoder the same hidden_size",
        )
    return layout, layers


def _param_map(
    layouts: tuple[HFEmbeddingLayout, HFEncoderLayout],
    mlm: nn.Module | None,
    nsp: nn.Module | None,
) -> dict[str, Tensor]:
    """HF key (without the ``bert.`` / ``ernie.`` prefix on body keys) -> our tensor or a view.

    The fused QKV weight appears as three row-block views, one per HF projection, so that reading
    a view exports and copying into it imports. The tied decoder aliases are not listed.
    """
    embedding, layers = layouts
    out: dict[str, Tensor] = {**embedding.tables, **layers.tables}
    if nsp is not None:
        out["pooler.dense.weight"] = nsp.pooler.dense.weight
        out["pooler.dense.bias"] = nsp.pooler.dense.bias
    if mlm is not None:
        t = mlm.transform
        out.update(
            {
                "cls.predictions.transform.dense.weight": t.dense.weight,
                "cls.predictions.transform.dense.bias": t.dense.bias,
                "cls.predictions.transform.LayerNorm.weight": t.norm.weight,
                "cls.predictions.transform.LayerNorm.bias": t.norm.bias,
                "cls.predictions.bias": mlm.bias,
            }
        )
    if nsp is not None:
        out["cls.seq_relationship.weight"] = nsp.classifier.weight
        out["cls.seq_relationship.bias"] = nsp.classifier.bias
    return out


def _full_key(key: str, prefix: str) -> str:
    return key if key.startswith("cls.") else prefix + key


def to_hf_state_dict(
    embedding: nn.Module,
    encoder: nn.Module,
    mlm: nn.Module | None = None,
    nsp: nn.Module | None = None,
    prefix: str | None = None,
    include_tied: bool = True,
) -> dict[str, Tensor]:
    """Our weights as an HF state dict (``BertForPreTraining`` layout with the default prefix;
    ``ErnieForPreTraining`` for an embedding whose ``hf_layout`` is ERNIE's).

    Every tensor is a detached, contiguous copy, so the dict can be saved with safetensors as is.
    ``include_tied`` adds ``cls.predictions.decoder.weight`` (== word embeddings) and
    ``cls.predictions.decoder.bias`` (== ``cls.predictions.bias``) as ``torch.save`` checkpoints
    have them; HF re-ties them either way. ``prefix`` defaults to the family's (``bert.``,
    ``ernie.``); ``prefix=""`` gives ``BertModel`` / ``ErnieModel`` body keys.
    """
    layouts = _check_bert(embedding, encoder)
    if prefix is None:
        prefix = f"{layouts[0].model_type}."
    state = {
        _full_key(k, prefix): v.detach().contiguous().clone()
        for k, v in _param_map(layouts, mlm, nsp).items()
    }
    if mlm is not None and include_tied:
        word = state[prefix + "embeddings.word_embeddings.weight"]
        state["cls.predictions.decoder.weight"] = word.clone()
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()
    return state


def _normalise_key(key: str) -> str:
    """Strip the ``bert.`` / ``ernie.`` prefix and rename legacy ``gamma``/``beta`` LayerNorm
    parameters."""
    for family in FAMILIES:
        key = key.removeprefix(f"{family}.")
    if key.endswith(".gamma"):
        key = key[: -len("gamma")] + "weight"
    elif key.endswith(".beta"):
        key = key[: -len("beta")] + "bias"
    return key


def _fold_task_row(
    normalised: Mapping[str, Tensor], targets: Mapping[str, Tensor], used: set[str]
) -> None:
    """ERNIE's task table (``use_task_id``) into a model that has none (``BertEmbeddings``): HF
    ERNIE adds task row 0 to every token of a call without ``task_type_ids``, as it adds the
    token's segment row, so row 0 goes into each segment row: the model then computes what the
    ERNIE checkpoint computes for task 0 (fine-tuning's task), instead of dropping the row and
    shifting every embedding. The other rows (pre-training tasks) have no place; said once."""
    task = "embeddings.task_type_embeddings.weight"
    segments = "embeddings.token_type_embeddings.weight"
    table = normalised.get(task)
    if table is None or task in targets or segments not in used:
        return
    targets[segments].add_(table[0].to(targets[segments]))
    used.add(task)
    log.warning(
        "ernie.%s: this model has no task table, so the checkpoint's task row 0 (the task HF "
        "ERNIE and clozelab use without task ids) is added to each segment row, which computes "
        "the same; the other %d rows (pre-training tasks) are not loaded. Fix: build the model "
        "with embedding=task to keep every row",
        task,
        table.shape[0] - 1,
    )


@torch.no_grad()
def from_hf_state_dict(
    state: Mapping[str, Tensor],
    embedding: nn.Module,
    encoder: nn.Module,
    mlm: nn.Module | None = None,
    nsp: nn.Module | None = None,
    strict: bool = False,
) -> dict[str, list[str]]:
    """Copy an HF BERT (or ERNIE) state dict into our modules, in place.

    Accepts ``BertForPreTraining`` / ``BertForMaskedLM`` keys (``bert.`` prefix; ERNIE's:
    ``ernie.``) and ``BertModel`` keys (none); ``cls.predictions.decoder.*`` present or absent
    (the decoder is always the word table; a ``decoder.bias`` stands in for a missing
    ``cls.predictions.bias``); legacy ``gamma``/``beta`` names; ``position_ids``/
    ``token_type_ids`` buffers (ignored).

    Returns ``{"missing": [...], "unexpected": [...]}``: HF names (``BertForPreTraining`` layout,
    ``ErnieForPreTraining`` for an ERNIE embedding) of our parameters the dict did not have (left
    as initialised), and keys of the dict nothing here consumed (e.g. the pooler when no NSP head
    is given). ``strict=True`` raises a ClozelabError instead when either list is non-empty. A
    shape mismatch always raises.
    """
    layouts = _check_bert(embedding, encoder)
    family = layouts[0].model_type
    normalised: dict[str, Tensor] = {}
    original: dict[str, str] = {}
    for key, value in state.items():
        norm = _normalise_key(key)
        if norm not in normalised:
            normalised[norm] = value
            original[norm] = key
    targets = _param_map(layouts, mlm, nsp)
    used: set[str] = {k for k in IGNORED_KEYS if k in normalised}
    if mlm is not None:
        decoder_bias = normalised.get("cls.predictions.decoder.bias")
        if "cls.predictions.bias" not in normalised and decoder_bias is not None:
            normalised["cls.predictions.bias"] = decoder_bias
        if decoder_bias is not None:
            used.add("cls.predictions.decoder.bias")

    missing: list[str] = []
    for key, target in targets.items():
        value = normalised.get(key)
        if value is None:
            missing.append(_full_key(key, f"{family}."))
            continue
        if tuple(value.shape) != tuple(target.shape):
            raise config_error(
                f"checkpoint[{original.get(key, key)}]",
                tuple(value.shape),
                f"this model expects shape {tuple(target.shape)}",
                "build the model with the checkpoint's config.json sizes (vocab_size, "
                "hidden_size, num_heads, intermediate_size, max_position_embeddings)",
            )
        target.copy_(value)
        used.add(key)

    _fold_task_row(normalised, targets, used)
    decoder = normalised.get("cls.predictions.decoder.weight")
    if mlm is not None and decoder is not None:
        used.add("cls.predictions.decoder.weight")
        word = embedding.word_embeddings.weight
        if decoder.shape != word.shape or not torch.allclose(decoder.to(word), word):
            warnings.warn(
                "cls.predictions.decoder.weight differs from the word embeddings; clozelab ties "
                "the decoder to the word table, so the checkpoint's decoder is ignored",
                stacklevel=2,
            )

    unexpected = [original[k] for k in normalised if k not in used and k in original]
    report = {"missing": missing, "unexpected": unexpected}
    if strict and (missing or unexpected):
        raise ClozelabError(
            f"checkpoint does not match the model: missing={missing}, unexpected={unexpected}. "
            "Fix: load with strict=False or build the matching heads (objective=[mlm,nsp])"
        )
    return report


def hf_config_dict(
    embedding: nn.Module,
    encoder: nn.Module,
    vocab_size: int | None = None,
    *,
    mlm: nn.Module | None = None,
    nsp: nn.Module | None = None,
    initializer_range: float = 0.02,
    **extra: Any,
) -> dict[str, Any]:
    """An HF ``config.json`` dict for these modules (``model_type`` "bert", or "ernie" for an
    embedding whose ``hf_layout`` is ERNIE's, with its ``use_task_id`` / ``task_type_vocab_size``).

    ``architectures`` follows the heads given: MLM + NSP -> ``BertForPreTraining``, MLM only ->
    ``BertForMaskedLM``, neither -> ``BertModel`` (``Ernie...`` for ERNIE). ``extra`` entries are
    added last (e.g. ``torch_dtype``). Raises a ClozelabError when the modules cannot be one HF
    BERT (the MLM transform's activation or LayerNorm epsilon differing from the encoder's: HF
    has one ``hidden_act`` and one ``layer_norm_eps``).
    """
    layout, layers = _check_bert(embedding, encoder)
    if vocab_size is not None and vocab_size != layout.config["vocab_size"]:
        raise config_error(
            "vocab_size",
            vocab_size,
            f"the embedding table has {layout.config['vocab_size']} rows",
            "export with the model's own vocabulary size",
        )
    eps, act = layers.config["layer_norm_eps"], layers.config["hidden_act"]
    if mlm is not None:
        if canonical_activation(mlm.transform.activation) != canonical_activation(act):
            raise config_error(
                "objective.mlm.activation",
                mlm.transform.activation,
                f"HF BERT uses one hidden_act, and the encoder's is {act!r}",
                "give the MLM head the encoder's activation",
            )
        if mlm.transform.norm.eps != eps:
            raise config_error(
                "objective.mlm.layer_norm_eps",
                mlm.transform.norm.eps,
                f"HF BERT uses one layer_norm_eps, and the encoder's is {eps}",
                "give the MLM head the encoder's layer_norm_eps",
            )
    if mlm is not None and nsp is not None:
        architecture = "ForPreTraining"
    elif mlm is not None:
        architecture = "ForMaskedLM"
    elif nsp is not None:
        architecture = "ForNextSentencePrediction"
    else:
        architecture = "Model"
    config: dict[str, Any] = {
        "architectures": [FAMILIES[layout.model_type] + architecture],
        "model_type": layout.model_type,
        "hidden_size": encoder.hidden_size,
        **{key: layers.config[key] for key in HF_ENCODER_CONFIG},
        "initializer_range": initializer_range,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        **layout.config,
    }
    config.update(extra)
    return config


def kwargs_from_hf_config(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Constructor kwargs of our modules for an HF BERT (or ERNIE) ``config.json`` dict.

    Returns ``{"embedding": ..., "encoder": ..., "mlm": ..., "nsp": ...}`` for
    ``BertEmbeddings`` (``TaskEmbeddings``, with ``num_tasks``, for an ERNIE config with
    ``use_task_id``: ``embedding_from_hf_config`` picks), ``TransformerEncoder``, ``MLM`` and
    ``NSP``. Raises a ClozelabError for configs that are not plain absolute-position BERT.
    """
    model_type = config.get("model_type", "bert")
    if model_type not in FAMILIES:
        raise config_error(
            "config.json model_type",
            model_type,
            "only BERT and ERNIE checkpoints map onto BertEmbeddings + TransformerEncoder",
            "load a checkpoint whose model_type is 'bert' or 'ernie'; for the hf/ folder of a "
            "clozelab run (T5, BART, ...) give the run directory above it (checkpoint=RUN)",
        )
    position_type = config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise config_error(
            "config.json position_embedding_type",
            position_type,
            "only absolute learned positions are supported",
            "load a checkpoint with absolute position embeddings",
        )
    act = canonical_activation(config.get("hidden_act", "gelu"), key="config.json hidden_act")
    hidden = config["hidden_size"]
    eps = config.get("layer_norm_eps", 1e-12)
    std = config.get("initializer_range", 0.02)
    dropout = config.get("hidden_dropout_prob", 0.1)
    embedding = {
        "vocab_size": config["vocab_size"],
        "hidden_size": hidden,
        "max_position_embeddings": config.get("max_position_embeddings", 512),
        "type_vocab_size": config.get("type_vocab_size", 2),
        "layer_norm_eps": eps,
        "dropout": dropout,
        "pad_token_id": config.get("pad_token_id", 0),
        "initializer_range": std,
    }
    if model_type == "ernie" and config.get("use_task_id", False):  # HF ErnieConfig's default: 3
        embedding["num_tasks"] = check_int(
            config.get("task_type_vocab_size", 3),
            "config.json task_type_vocab_size",
            1,
            "an ERNIE config with use_task_id needs a task table",
            "write the row count of ernie.embeddings.task_type_embeddings.weight there, or "
            "use_task_id: false for a model without task ids",
        )
    return {
        "embedding": embedding,
        "encoder": {
            "hidden_size": hidden,
            "num_layers": config["num_hidden_layers"],
            "num_heads": config["num_attention_heads"],
            "intermediate_size": config["intermediate_size"],
            "dropout": dropout,
            "attention_dropout": config.get("attention_probs_dropout_prob", 0.1),
            "activation": act,
            "layer_norm_eps": eps,
            "initializer_range": std,
        },
        "mlm": {
            "hidden_size": hidden,
            "vocab_size": config["vocab_size"],
            "activation": act,
            "layer_norm_eps": eps,
            "initializer_range": std,
        },
        "nsp": {"hidden_size": hidden, "initializer_range": std},
    }


def embedding_from_hf_config(config: Mapping[str, Any]) -> Embedding:
    """The embedding an HF BERT / ERNIE ``config.json`` dict describes: ``TaskEmbeddings`` for an
    ERNIE config with ``use_task_id`` (its ``task_type_vocab_size`` rows), else ``BertEmbeddings``
    (ERNIE without task ids is BERT)."""
    kw = kwargs_from_hf_config(config)["embedding"]
    return TaskEmbeddings(**kw) if "num_tasks" in kw else BertEmbeddings(**kw)
