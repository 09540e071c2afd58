"""One builder for a run's components.

``build_components`` builds the embedding, encoder, objectives and corruption of a pretrain config
(Hydra ``_target_`` nodes) with the tokenizer's ids filled in; ``pretraining_heads``,
``plm_objective`` and ``run_decoder`` find the objectives an HF layout has a place for. Weights
come from ``training/loading.py`` (the one checkpoint loader).
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, open_dict
from torch import nn

from clozelab.core.config import build, target_class
from clozelab.corruption.runtime import runtime_kwargs

log = logging.getLogger(__name__)


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
    if prepared is not None:  # e.g. ERNIE-THU's entity table from the corpus's link graph
        fixed = encoder.bind_corpus(prepared.corpus_stats)  # Encoder hook
        if fixed:
            with open_dict(cfg):  # recorded in config.yaml: a rebuild gets the same shapes
                cfg.encoder.update(fixed)
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


def log_load_report(source: str, report: dict[str, list[str]]) -> None:
    if report["missing"]:
        log.warning(
            "%s: %d weights missing, left as initialised: %s",
            source,
            len(report["missing"]),
            report["missing"],
        )
    if report["unexpected"]:
        log.warning(
            "%s: %d weights unused: %s", source, len(report["unexpected"]), report["unexpected"]
        )
    if not report["missing"] and not report["unexpected"]:
        log.info("%s: every weight loaded", source)
