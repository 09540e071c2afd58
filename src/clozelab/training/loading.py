"""The one checkpoint loader: a clozelab run directory, a checkpoint inside one, or an HF
directory -> built components with the weights in them.

``load_weights`` copies the weights of a source into components already built (a run's, by
module name; an HF BERT / XLNet / T5 / BART directory's, through the family's key mapping in
``clozelab.model``): ``model.init_from`` calls it on the components of a new run.
``load_checkpoint`` first builds the components the source describes (a run: its
``config.yaml`` and tokenizer through ``build_components``; an HF directory: the body its
``config.json`` names and the heads its weights hold), then loads them the same way:
``clozelab.load``, ``clozelab export`` and the fine-tuning backbone (``load_backbone``) call it.
Every file is read by ``core/rundir`` (``weights_only=True``; a damaged file is a ClozelabError
naming it). Building draws nothing from the global random generator, so a fine-tuning seed's
head starts from the same draw whatever was loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from clozelab.core.config import build
from clozelab.core.errors import config_error
from clozelab.core.rundir import (
    hf_model_type,
    load_state_checked,
    locate,
    read_checkpoint_state,
    read_hf_config,
    read_hf_weights,
    run_checkpoint,
)
from clozelab.data.knowledge import ENTITIES_FILE, EntityLinker
from clozelab.data.tokenizer import load_tokenizer
from clozelab.model.layers import Pooler, canonical_activation
from clozelab.tasks.backbone import NONE, Backbone
from clozelab.training.components import (
    build_components,
    log_load_report,
    plm_objective,
    pretraining_heads,
    run_decoder,
)

log = logging.getLogger(__name__)

WORD_KEYS = (
    "bert.embeddings.word_embeddings.weight",
    "ernie.embeddings.word_embeddings.weight",
    "embeddings.word_embeddings.weight",
)


@dataclass
class Loaded:
    """Components with a checkpoint's weights in them.

    Attributes:
        kind: ``run`` (a clozelab run) or ``hf`` (an HF directory).
        root: the run directory or the HF directory.
        weights: the file the weights came from (a run's checkpoint, the HF weights file).
        embedding, encoder: the body.
        objectives: a run's objectives by name; an HF directory's heads (``mlm``, ``nsp``,
            ``plm``) its weights hold.
        report: ``{"missing": [...], "unexpected": [...]}`` of the loading.
        pooler: the pre-trained [CLS] pooler (NSP's or SOP's, an HF ``pooler``), or None.
        state: the weights as read.
    """

    kind: str
    root: Path
    weights: Path
    embedding: nn.Module
    encoder: nn.Module
    objectives: dict[str, nn.Module]
    report: dict[str, list[str]]
    pooler: nn.Module | None = None
    state: dict = field(default_factory=dict, repr=False)

    @property
    def decoder(self) -> nn.Module | None:
        """The decoder of an encoder-decoder run, else None."""
        return run_decoder(self.objectives)

    @property
    def hf_family(self) -> str:
        """The HF family of what was loaded: an HF directory's ``config.json`` ``model_type``
        (``bert``, ``ernie``, ``xlnet``, ...); a run's as ``clozelab export`` would write it (its
        embedding's ``hf_layout``, e.g. ``ernie`` for a task table, else its encoder's
        ``hf_model_type``)."""
        if self.kind == "hf":
            return hf_model_type(self.root) or "bert"
        layout = self.embedding.hf_layout()  # Embedding hook
        return self.encoder.hf_model_type if layout is None else layout.model_type

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer" if self.kind == "run" else self.root

    def check_complete(self) -> None:
        """A run's checkpoint must hold every weight of the model its config describes."""
        missing = self.report["missing"]
        if self.kind == "run" and missing:
            raise config_error(
                "checkpoint",
                str(self.weights),
                f"lacks weights of the model its config.yaml describes: {missing[:5]}",
                "pass the checkpoint of this run (its config.yaml was changed, or the file is "
                "not a clozelab checkpoint)",
            )


# ---------------------------------------------------------------------------- weights into parts
def _check_vocab(rows: int, tokenizer, source: str) -> None:
    if rows != tokenizer.vocab_size:
        raise config_error(
            "model.init_from",
            source,
            f"its word embeddings have {rows} rows but the tokenizer has "
            f"{tokenizer.vocab_size} tokens",
            f"use the checkpoint's own tokenizer: tokenizer=pretrained tokenizer.path={source}",
        )


def _extra_rows(embedding: nn.Module, tokenizer) -> int:
    """Rows of the word table beyond the tokenizer's (the corruption's sentinels)."""
    return embedding.word_embeddings.weight.shape[0] - tokenizer.vocab_size


def _run_weights(path: Path, parts, key: str, tokenizer) -> tuple[dict, dict, Path]:
    """A run's checkpoint into ``parts`` by module name (sizes checked first)."""
    embedding, encoder, objectives = parts
    run_dir, checkpoint = run_checkpoint(path, key)
    state = read_checkpoint_state(checkpoint, key)
    word = state.get("embedding.word_embeddings.weight")
    if tokenizer is not None and word is not None:
        _check_vocab(word.shape[0] - _extra_rows(embedding, tokenizer), tokenizer, str(run_dir))
    container = nn.Module()
    container.embedding, container.encoder = embedding, encoder
    container.objectives = nn.ModuleDict(objectives)
    fix = None
    if key == "model.init_from":
        fix = f"build the same sizes as the run it comes from (see {run_dir}/config.yaml)"
    load_state_checked(container, state, str(checkpoint), key=key, fix=fix)
    expected = container.state_dict()
    report = {
        "missing": sorted(set(expected) - set(state)),
        "unexpected": sorted(set(state) - set(expected)),
    }
    return report, state, checkpoint


def _hf_weights(directory: Path, state: dict, parts, key: str, shown: str, tokenizer) -> dict:
    """An HF directory's weights into ``parts`` through its family's key mapping."""
    embedding, encoder, objectives = parts
    family = hf_model_type(directory)
    if family in ("t5", "bart"):
        from clozelab.model.hf_seq2seq import SHARED, from_hf_state_dict, layout_of

        decoder = run_decoder(objectives)
        if decoder is None:
            raise config_error(
                key,
                shown,
                f"an HF {family} encoder-decoder, but this run has no decoder",
                f"add objective=[seq2seq] decoder={family} (experiment={family})",
            )
        layout = layout_of(embedding, encoder, decoder)
        if layout != family:  # no key would match: nothing would be loaded
            raise config_error(
                key,
                shown,
                f"an HF {family} encoder-decoder, but this run builds the {layout} layout",
                f"build a {family} model (experiment={family}), or point to an HF {layout} "
                "directory",
            )
        if tokenizer is not None:
            rows = state[SHARED[family]].shape[0] - _extra_rows(embedding, tokenizer)
            _check_vocab(rows, tokenizer, shown)
        return from_hf_state_dict(state, embedding, encoder, decoder)
    if family == "xlnet":
        from clozelab.model.hf_xlnet import WORD_KEY, from_hf_xlnet_state_dict

        if tokenizer is not None:
            word = state.get(WORD_KEY, state.get(WORD_KEY.removeprefix("transformer.")))
            if word is None:
                raise config_error(
                    key, shown, "has no word embeddings", "point to an HF XLNet checkpoint"
                )
            _check_vocab(word.shape[0], tokenizer, shown)
        plm = plm_objective(objectives)
        return from_hf_xlnet_state_dict(
            state, embedding, encoder, None if plm is None else plm.bias
        )
    from clozelab.model.hf import from_hf_state_dict

    if tokenizer is not None:
        word = next((state[k] for k in WORD_KEYS if k in state), None)
        if word is None:
            raise config_error(
                key, shown, "has no word embeddings", "point to an HF BERT checkpoint"
            )
        _check_vocab(word.shape[0], tokenizer, shown)
    mlm, nsp = pretraining_heads(objectives)
    report = from_hf_state_dict(state, embedding, encoder, mlm, nsp)  # a BERT encoder, checked
    _warn_other_activation(read_hf_config(directory), encoder, key, shown)
    return report


def _warn_other_activation(config: dict, encoder: nn.Module, key: str, shown: str) -> None:
    """Say so when an HF BERT / ERNIE checkpoint's ``hidden_act`` is not the activation of the
    encoder it loads into (an ERNIE 2.0 export's relu into a default gelu BERT run): every weight
    loads, and the layers compute another function than the one they were trained with."""
    theirs = canonical_activation(config.get("hidden_act", "gelu"), "config.json hidden_act")
    ours = canonical_activation(encoder.hf_layout().config["hidden_act"])  # Encoder hook
    if ours != theirs:
        log.warning(
            "%s=%s: its config.json hidden_act is %s, but this model's activation is %s; the "
            "weights load, and the layers compute another function than the one they were "
            "trained with. Fix: model.activation=%s",
            key,
            shown,
            theirs,
            ours,
            theirs,
        )


def load_weights(
    source: str | Path,
    embedding: nn.Module,
    encoder: nn.Module,
    objectives: dict[str, nn.Module],
    *,
    key: str = "checkpoint",
    tokenizer=None,
) -> dict[str, list[str]]:
    """Copy the weights of ``source`` (a run directory or checkpoint: by module name; an HF BERT,
    XLNet, T5 or BART directory: through its family's mapping, into the heads / decoder that
    ``objectives`` have) into built components; ``{"missing": [...], "unexpected": [...]}``.

    With ``tokenizer`` (``model.init_from``) the source's vocabulary must be the tokenizer's;
    any shape mismatch is a ClozelabError under ``key``.
    """
    kind, resolved = locate(source, key)
    parts = (embedding, encoder, objectives)
    if kind == "hf":
        state = read_hf_weights(resolved)
        return _hf_weights(resolved, state, parts, key, str(source), tokenizer)
    return _run_weights(resolved, parts, key, tokenizer)[0]


def init_components(
    init_from: str | Path | None,
    embedding: nn.Module,
    encoder: nn.Module,
    objectives: dict[str, nn.Module],
    tokenizer,
) -> dict[str, list[str]] | None:
    """``model.init_from``: the weights of an HF BERT / XLNet / T5 / BART directory or a clozelab
    run (directory or checkpoint) into a new run's freshly built components (``load_weights``;
    the heads and decoder load when both sides have them). Missing and unexpected weights are
    logged and returned; a vocabulary that differs from the tokenizer's, or any shape mismatch,
    raises a ClozelabError."""
    if init_from in (None, ""):
        return None
    source = str(init_from)
    report = load_weights(
        init_from, embedding, encoder, objectives, key="model.init_from", tokenizer=tokenizer
    )
    log.info("model.init_from=%s", source)
    log_load_report(f"model.init_from={source}", report)
    return report


# ---------------------------------------------------------------------------- build, then load
def _build_hf(directory: Path, state: dict, heads: bool):
    """The body an HF ``config.json`` names and, with ``heads``, the heads its weights hold."""
    config = read_hf_config(directory)
    objectives: dict[str, nn.Module] = {}
    if config.get("model_type") == "xlnet":
        from clozelab.model.hf_xlnet import kwargs_from_xlnet_config, xlnet_modules
        from clozelab.objectives.plm import PermutationLM

        embedding, encoder = xlnet_modules(config)
        if heads and "lm_loss.bias" in state:
            objectives["plm"] = PermutationLM(**kwargs_from_xlnet_config(config)["plm"])
        return embedding, encoder, objectives
    from clozelab.model.encoder import TransformerEncoder
    from clozelab.model.hf import embedding_from_hf_config, kwargs_from_hf_config
    from clozelab.objectives.mlm import MLM
    from clozelab.objectives.nsp import NSP

    kw = kwargs_from_hf_config(config)
    embedding, encoder = embedding_from_hf_config(config), TransformerEncoder(**kw["encoder"])
    if heads and any(k.startswith("cls.predictions.") for k in state):
        objectives["mlm"] = MLM(**kw["mlm"])
    if heads and any(k.startswith("cls.seq_relationship.") for k in state):
        objectives["nsp"] = NSP(**kw["nsp"])
        if not any("pooler." in k for k in state):
            log.warning(
                "%s has an NSP classifier but no pooler; the pooler is left random", directory
            )
    return embedding, encoder, objectives


def _hf_pooler(state: dict, hidden_size: int) -> nn.Module | None:
    """An HF checkpoint's [CLS] pooler (``pooler.``, ``bert.pooler.`` or ``ernie.pooler.``), or
    None."""
    pooler = None
    for prefix in ("pooler.", "bert.pooler.", "ernie.pooler."):
        if f"{prefix}dense.weight" in state:
            pooler = Pooler(hidden_size)
            pooler.dense.weight.data.copy_(state[f"{prefix}dense.weight"])
            pooler.dense.bias.data.copy_(state[f"{prefix}dense.bias"])
    return pooler


def _summary_pooler(objectives: dict[str, nn.Module]) -> nn.Module | None:
    return next((p for o in objectives.values() if (p := o.summary_pooler()) is not None), None)


def build_run_components(run_dir: Path):
    """Rebuild a run's embedding, encoder and objectives from its ``config.yaml`` and tokenizer."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    embedding, encoder, objectives, _ = build_components(cfg, tokenizer)
    return cfg, embedding, encoder, objectives


def load_checkpoint(path: str | Path, *, key: str = "checkpoint", heads: bool = True) -> Loaded:
    """Build what ``path`` (a run directory, a checkpoint of a run, an HF BERT / XLNet directory)
    describes and load its weights into it. ``heads=False`` leaves an HF directory's heads out
    (the fine-tuning body); a run always comes with its objectives."""
    kind, resolved = locate(path, key)
    with torch.random.fork_rng(devices=[]):  # loading draws nothing from the global generator
        if kind == "hf":
            state = read_hf_weights(resolved)
            embedding, encoder, objectives = _build_hf(resolved, state, heads)
            parts = (embedding, encoder, objectives)
            report = _hf_weights(resolved, state, parts, key, str(path), None)
            pooler = (
                objectives["nsp"].pooler
                if "nsp" in objectives
                else _hf_pooler(state, encoder.hidden_size)
            )
            weights = next(
                p
                for p in (resolved / "model.safetensors", resolved / "pytorch_model.bin")
                if p.is_file()
            )
            return Loaded(
                "hf", resolved, weights, embedding, encoder, objectives, report, pooler, state
            )
        run_dir, _ = run_checkpoint(resolved, key)
        _, embedding, encoder, objectives = build_run_components(run_dir)
        parts = (embedding, encoder, objectives)
        report, state, checkpoint = _run_weights(resolved, parts, key, None)
    return Loaded(
        "run",
        run_dir,
        checkpoint,
        embedding,
        encoder,
        objectives,
        report,
        _summary_pooler(objectives),
        state,
    )


# ---------------------------------------------------------------------------- the fine-tuning body
def _body_missing(loaded: Loaded) -> None:
    """A body (embedding, encoder, decoder) the checkpoint does not fully hold is refused."""
    if loaded.kind == "hf":
        if loaded.report["missing"]:
            family = loaded.hf_family.upper()  # the directory's, not the encoder's: ERNIE
            raise config_error(
                "checkpoint",
                str(loaded.weights),
                f"missing {family} weights {loaded.report['missing'][:3]}",
                f"give a complete HF {family} checkpoint",
            )
        return
    prefixes = ["embedding.", "encoder."]
    prefixes += [
        f"objectives.{name}.decoder."
        for name, o in loaded.objectives.items()
        if o.seq2seq_decoder() is not None
    ]
    for prefix in prefixes:
        missing = [k[len(prefix) :] for k in loaded.report["missing"] if k.startswith(prefix)]
        if missing:
            raise config_error(
                "checkpoint",
                str(loaded.weights),
                f"the checkpoint lacks {len(missing)} weights of {prefix.rstrip('.')} "
                f"({missing[:3]})",
                "point to a checkpoint written by clozelab pretrain with the same components",
            )


def _random_backbone(like, arch: DictConfig | None, tokenizer_path: str | None) -> Backbone:
    """A randomly initialised body with the sizes of the checkpoint ``like``, or of ``arch``
    (a config with ``model``, ``embedding``, ``encoder`` nodes) and the tokenizer at
    ``tokenizer_path``."""
    if like:
        kind, resolved = locate(like, "random_init.like")
        decoder = None
        if kind == "run":
            key = "random_init.like"
            root = resolved if resolved.is_dir() else run_checkpoint(resolved, key)[0]
            cfg = OmegaConf.load(root / "config.yaml")
            if cfg.get("decoder") is not None:  # encoder-decoder: a random decoder (and sentinels)
                _, embedding, encoder, objectives = build_run_components(root)
                decoder = run_decoder(objectives)
            else:
                embedding = build(cfg.embedding, "embedding")
                encoder = build(cfg.encoder, "encoder")
        else:
            root = resolved
            embedding, encoder, _ = _build_hf(resolved, {}, heads=False)
        tokenizer = load_tokenizer(root)
        embedding.bind_tokenizer(tokenizer)
        return Backbone(embedding, encoder, tokenizer, None, "none", decoder)
    if arch is None or tokenizer_path is None:
        raise config_error(
            "checkpoint",
            "none",
            "random initialisation needs a tokenizer and model sizes",
            "set random_init.like=PATH, or random_init.tokenizer and model=NAME",
        )
    tokenizer = load_tokenizer(tokenizer_path)
    arch = arch.copy()
    with open_dict(arch):
        arch.model.vocab_size = tokenizer.vocab_size
    embedding = build(arch.embedding, "embedding")
    embedding.bind_tokenizer(tokenizer)
    encoder = build(arch.encoder, "encoder")
    return Backbone(embedding, encoder, tokenizer, None, "none")


def load_backbone(
    checkpoint: str | Path | None,
    *,
    like: str | None = None,
    arch: DictConfig | None = None,
    tokenizer: str | None = None,
) -> Backbone:
    """The body a downstream task fine-tunes: embedding + encoder (+ the pre-trained pooler and
    decoder) + tokenizer of ``checkpoint`` (a run directory, a checkpoint of a run, an HF BERT
    or XLNet directory); ``checkpoint`` none/null builds a random one like ``like`` or from
    ``arch`` and the tokenizer at ``tokenizer`` (the "why pre-train" baseline)."""
    if checkpoint is None or str(checkpoint).lower() in NONE:
        return _random_backbone(like, arch, tokenizer)
    loaded = load_checkpoint(str(checkpoint), heads=False)
    _body_missing(loaded)
    backbone = Backbone(
        loaded.embedding,
        loaded.encoder,
        load_tokenizer(loaded.root),
        loaded.pooler,
        str(loaded.root),
        loaded.decoder,
    )
    entities = Path(loaded.root) / ENTITIES_FILE
    if "entity_links" in loaded.encoder.batch_inputs and entities.is_file():  # ERNIE-THU
        backbone.linker = EntityLinker.from_file(entities)
        log.info("Entity inputs: task text linked to the %d entities of %s",
                 len(backbone.linker.ids), entities)  # fmt: skip
    log.info("Loaded %s backbone from %s", loaded.kind, loaded.root)
    return backbone
