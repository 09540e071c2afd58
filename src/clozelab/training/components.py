"""One builder for a run's components, and ``model.init_from``.

``build_components`` builds the embedding, encoder, objectives and corruption of a pretrain config
(Hydra ``_target_`` nodes) with the tokenizer's ids filled in; ``build_run_components`` rebuilds
them from a finished run's ``config.yaml``; ``init_components`` copies the weights of an HF BERT
directory or a clozelab run into freshly built components.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict
from torch import nn

from clozelab.core.config import build, target_class
from clozelab.core.errors import config_error
from clozelab.core.rundir import (
    hf_model_type,
    locate,
    read_checkpoint_state,
    read_hf_weights,
    run_checkpoint,
)
from clozelab.corruption.runtime import runtime_kwargs

log = logging.getLogger(__name__)

WORD_KEYS = ("bert.embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight")


def build_components(cfg: DictConfig, tokenizer, prepared=None):
    """Embedding, encoder, objectives and corruption, with the tokenizer's ids filled in (and the
    training shards, for corruptions that count corpus tables: unigram, phrases). The model's
    vocabulary is the tokenizer's plus the corruption's ``extra_vocab`` (T5 sentinels)."""
    corruption = build_corruption(cfg.corruption, "corruption", tokenizer, prepared)
    with open_dict(cfg):  # T5 sentinels: ids beyond the tokenizer's (corruption.extra_vocab)
        cfg.model.vocab_size = tokenizer.vocab_size + corruption.extra_vocab
    embedding = build(cfg.embedding, "embedding")
    embedding.bind_tokenizer(tokenizer)  # e.g. the character CNN spells the vocabulary
    encoder = build(cfg.encoder, "encoder")
    objectives = {name: build(node, f"objective.{name}") for name, node in cfg.objective.items()}
    return embedding, encoder, objectives, corruption


def build_corruption(node: DictConfig, key: str, tokenizer, prepared=None):
    """The corruption under config ``key`` (``corruption``, ``validation_reference``) with the
    tokenizer's ids and the shards' tables it needs."""
    kind = target_class(node, key)
    return build(node, key, **runtime_kwargs(kind, tokenizer, prepared))


def pretraining_heads(objectives: dict[str, nn.Module]) -> tuple[nn.Module | None, ...]:
    """The MLM and NSP objectives among ``objectives`` (each None when absent): the heads an HF
    BertForPreTraining has."""
    from clozelab.objectives.mlm import MLM
    from clozelab.objectives.nsp import NSP

    mlm = next((o for o in objectives.values() if isinstance(o, MLM)), None)
    nsp = next((o for o in objectives.values() if isinstance(o, NSP)), None)
    return mlm, nsp


def plm_objective(objectives: dict[str, nn.Module]) -> nn.Module | None:
    """The permutation-LM objective among ``objectives`` (its bias is HF XLNet's
    ``lm_loss.bias``), or None."""
    from clozelab.objectives.plm import PermutationLM

    return next((o for o in objectives.values() if isinstance(o, PermutationLM)), None)


def run_decoder(objectives: dict[str, nn.Module]) -> nn.Module | None:
    """The decoder an objective of the run trains (encoder-decoder runs, the objectives'
    ``seq2seq_decoder`` hook), else None."""
    return next((d for o in objectives.values() if (d := o.seq2seq_decoder()) is not None), None)


def build_run_components(run_dir: Path):
    """Rebuild a run's embedding, encoder and objectives from its ``config.yaml`` and tokenizer."""
    from omegaconf import OmegaConf

    from clozelab.data.tokenizer import load_tokenizer as load_clozelab_tokenizer

    cfg = OmegaConf.load(run_dir / "config.yaml")
    tokenizer = load_clozelab_tokenizer(run_dir / "tokenizer")
    embedding, encoder, objectives, _ = build_components(cfg, tokenizer)
    return cfg, embedding, encoder, objectives


def log_load_report(source: str, report: dict[str, list[str]]) -> None:
    if report["missing"]:
        log.warning("%s: %d weights missing, left as initialised: %s", source,
                    len(report["missing"]), report["missing"])  # fmt: skip
    if report["unexpected"]:
        log.warning("%s: %d weights unused: %s", source, len(report["unexpected"]),
                    report["unexpected"])  # fmt: skip
    if not report["missing"] and not report["unexpected"]:
        log.info("%s: every weight loaded", source)


def _check_vocab(rows: int, tokenizer, source: str) -> None:
    if rows != tokenizer.vocab_size:
        raise config_error(
            "model.init_from",
            source,
            f"its word embeddings have {rows} rows but the tokenizer has "
            f"{tokenizer.vocab_size} tokens",
            f"use the checkpoint's own tokenizer: tokenizer=pretrained tokenizer.path={source}",
        )


def _init_seq2seq(directory: Path, source: str, embedding, encoder, objectives, tokenizer):
    """``model.init_from`` = an HF T5 / BART directory: body and decoder from its weights."""
    from clozelab.model.hf_seq2seq import SHARED, from_hf_state_dict

    decoder = run_decoder(objectives)
    kind = hf_model_type(directory)
    if decoder is None:
        raise config_error(
            "model.init_from", source, f"an HF {kind} encoder-decoder, but this run has no decoder",
            f"add objective=[seq2seq] decoder={kind} (experiment={kind})",
        )  # fmt: skip
    state = read_hf_weights(directory)
    extra = embedding.word_embeddings.weight.shape[0] - tokenizer.vocab_size
    _check_vocab(state[SHARED[kind]].shape[0] - extra, tokenizer, source)
    return from_hf_state_dict(state, embedding, encoder, decoder)


def _init_xlnet(directory: Path, source: str, embedding, encoder, objectives, tokenizer):
    """``model.init_from`` = an HF XLNet directory: the body, and the PLM bias when this run
    trains objective=[plm] (``clozelab.model.hf_xlnet``)."""
    from clozelab.model.hf_xlnet import WORD_KEY, from_hf_xlnet_state_dict

    state = read_hf_weights(directory)
    word = state.get(WORD_KEY, state.get(WORD_KEY.removeprefix("transformer.")))
    if word is None:
        raise config_error("model.init_from", source, "has no word embeddings",
                           "point to an HF XLNet checkpoint")  # fmt: skip
    _check_vocab(word.shape[0], tokenizer, source)
    plm = plm_objective(objectives)
    return from_hf_xlnet_state_dict(state, embedding, encoder, None if plm is None else plm.bias)


def init_components(
    init_from: str | Path | None,
    embedding: nn.Module,
    encoder: nn.Module,
    objectives: dict[str, nn.Module],
    tokenizer,
) -> dict[str, list[str]] | None:
    """Copy the weights of ``init_from`` into freshly built components (``model.init_from``).

    ``init_from`` is an HF BERT directory (mapped with ``clozelab.model.hf``; the MLM and NSP
    heads load when both sides have them), an HF XLNet directory (``clozelab.model.hf_xlnet``;
    the PLM bias loads with objective=[plm]), an HF T5 / BART directory (body and decoder, mapped
    with ``clozelab.model.hf_seq2seq``) or a clozelab run directory / checkpoint (loaded by
    module name). Missing and unexpected weights are logged and returned; a vocabulary that
    differs from the tokenizer's, or any shape mismatch, raises a ClozelabError.
    """
    if init_from in (None, ""):
        return None
    kind, resolved = locate(init_from, "model.init_from")
    source = str(init_from)
    if kind == "hf" and hf_model_type(resolved) in ("t5", "bart"):
        report = _init_seq2seq(resolved, source, embedding, encoder, objectives, tokenizer)
    elif kind == "hf" and hf_model_type(resolved) == "xlnet":
        report = _init_xlnet(resolved, source, embedding, encoder, objectives, tokenizer)
    elif kind == "hf":
        from clozelab.model.hf import from_hf_state_dict

        state = read_hf_weights(resolved)
        word = next((state[k] for k in WORD_KEYS if k in state), None)
        if word is None:
            raise config_error("model.init_from", source, "has no word embeddings",
                               "point to an HF BERT checkpoint")  # fmt: skip
        _check_vocab(word.shape[0], tokenizer, source)
        mlm, nsp = pretraining_heads(objectives)
        report = from_hf_state_dict(state, embedding, encoder, mlm, nsp)
    else:
        run_dir, checkpoint = run_checkpoint(resolved, "model.init_from")
        state = read_checkpoint_state(checkpoint)
        word = state.get("embedding.word_embeddings.weight")
        if word is not None:  # the tokenizer's ids plus the corruption's extra ids (sentinels)
            extra = embedding.word_embeddings.weight.shape[0] - tokenizer.vocab_size
            _check_vocab(word.shape[0] - extra, tokenizer, str(run_dir))
        container = nn.Module()
        container.embedding, container.encoder = embedding, encoder
        container.objectives = nn.ModuleDict(objectives)
        own = container.state_dict()
        for key, value in state.items():
            if key in own and tuple(own[key].shape) != tuple(value.shape):
                raise config_error(
                    f"model.init_from[{key}]",
                    tuple(value.shape),
                    f"this model expects {tuple(own[key].shape)}",
                    f"build the same sizes as the run it comes from (see {run_dir}/config.yaml)",
                )
        result = container.load_state_dict(state, strict=False)
        report = {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
    log.info("model.init_from=%s", source)
    log_load_report(f"model.init_from={source}", report)
    return report
