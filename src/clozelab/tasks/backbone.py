"""The pre-trained body a downstream task fine-tunes: embedding + encoder (+ pooler) + tokenizer.

``load_backbone`` reads a clozelab run directory (``config.yaml`` + ``checkpoints/last.ckpt`` +
``tokenizer/``), a Lightning checkpoint file inside one, an HF BERT or XLNet directory
(``config.json`` + ``model.safetensors`` or ``pytorch_model.bin`` + a tokenizer), or builds a
randomly initialised body (``checkpoint=none``: the "why pre-train" baseline) with the sizes of
``model`` or, with ``like``, of another checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from clozelab.core.config import build
from clozelab.core.errors import config_error
from clozelab.core.rundir import (
    load_state_checked,
    read_checkpoint_state,
    read_hf_config,
    read_hf_weights,
)
from clozelab.data.tokenizer import Tokenizer, load_tokenizer
from clozelab.model.encoder import EncoderOutput
from clozelab.model.layer_pool import embed_texts
from clozelab.model.layers import Pooler

log = logging.getLogger(__name__)

NONE = ("none", "null", "random", "")


class Backbone(nn.Module):
    """``embedding -> encoder``; ``pooler`` is the pre-trained [CLS] pooler when there is one;
    ``decoder`` the pre-trained decoder of an encoder-decoder run (text-to-text tasks)."""

    def __init__(
        self,
        embedding: nn.Module,
        encoder: nn.Module,
        tokenizer: Tokenizer,
        pooler: Pooler | None = None,
        source: str = "none",
        decoder: nn.Module | None = None,
    ):
        super().__init__()
        self.embedding = embedding
        self.encoder = encoder
        self.pooler = pooler
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.source = source
        self.hidden_size = int(encoder.hidden_size)
        self.num_layers = int(encoder.num_layers)
        self.max_positions = int(getattr(embedding, "max_position_embeddings", 512))
        #: the token a sequence-level head reads by default (``cls``; XLNet: ``last``)
        self.summary_pooling = encoder.summary_pooling

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        hidden = self.embedding(input_ids, token_type_ids)  # (B, T, H)
        extra = {}
        if token_type_ids is not None and "token_type_ids" in self.encoder.batch_inputs:
            extra["token_type_ids"] = token_type_ids  # relative segments (XLNet)
        return self.encoder(
            hidden, attention_mask, output_hidden_states=output_hidden_states, **extra
        )

    def embed(self, texts, layers=-1, pool: str = "mean", batch_size: int = 64):
        """Vectors of ``texts`` in one call (``model/layer_pool.embed_texts``): ``layers`` an
        index (-1: last layer) or a list averaged (``[-4, -3, -2, -1]``), ``pool`` mean | cls |
        none."""
        self.eval()

        def encode(input_ids, attention_mask, token_type_ids):
            return self(input_ids, attention_mask, token_type_ids, True).hidden_states

        return embed_texts(
            encode, self.tokenizer, texts, layers=layers, pool=pool,
            max_length=self.max_positions, batch_size=batch_size,
        )  # fmt: skip


@dataclass
class _Found:
    kind: str  # "run" | "hf"
    root: Path
    weights: Path


def _locate(path: Path) -> _Found:
    if path.is_file() and path.suffix == ".ckpt":
        root = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return _Found("run", root, path)
    if path.is_dir():
        if (path / "config.yaml").is_file():
            ckpts = path / "checkpoints"
            last = ckpts / "last.ckpt"
            if not last.is_file():
                found = sorted(ckpts.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
                if not found:
                    raise config_error(
                        "checkpoint",
                        str(path),
                        "a run directory without checkpoints/*.ckpt",
                        "let the pre-training run save a checkpoint, or point to another run",
                    )
                last = found[-1]
            return _Found("run", path, last)
        for sub in (path, path / "hf", path / "model"):
            if (sub / "config.json").is_file():
                for name in ("model.safetensors", "pytorch_model.bin"):
                    if (sub / name).is_file():
                        return _Found("hf", sub, sub / name)
    raise config_error(
        "checkpoint",
        str(path),
        "neither a clozelab run directory (config.yaml + checkpoints/), a .ckpt file nor an HF "
        "BERT directory (config.json + model.safetensors)",
        "give one of those, or checkpoint=none for random initialisation",
    )


def _run_modules(found: _Found) -> tuple[nn.Module, nn.Module, dict, DictConfig]:
    cfg = OmegaConf.load(found.root / "config.yaml")
    embedding = build(cfg.embedding, "embedding")
    encoder = build(cfg.encoder, "encoder")
    return embedding, encoder, read_checkpoint_state(found.weights), cfg


def _load_prefixed(module: nn.Module, state: dict, prefix: str, key: str) -> None:
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    load_state_checked(module, sub, key)
    missing = sorted(set(module.state_dict()) - set(sub))
    if missing:
        raise config_error(
            "checkpoint",
            key,
            f"the checkpoint lacks {len(missing)} weights of {prefix.rstrip('.')} ({missing[:3]})",
            "point to a checkpoint written by clozelab pretrain with the same components",
        )


def _from_run(found: _Found) -> Backbone:
    embedding, encoder, state, _ = _run_modules(found)
    _load_prefixed(embedding, state, "embedding.", str(found.weights))
    _load_prefixed(encoder, state, "encoder.", str(found.weights))
    pooler = None
    for prefix in ("objectives.nsp.pooler.", "objectives.sop.pooler.", "pooler."):
        if any(k.startswith(prefix) for k in state):
            pooler = Pooler(encoder.hidden_size)
            _load_prefixed(pooler, state, prefix, str(found.weights))
            break
    tokenizer = load_tokenizer(found.root)
    decoder = _run_decoder(found, state)
    return Backbone(embedding, encoder, tokenizer, pooler, str(found.root), decoder)


def _run_decoder(found: _Found, state: dict) -> nn.Module | None:
    """The decoder of an encoder-decoder run (the objective whose config holds ``decoder``,
    objective=[seq2seq]) with its trained weights; None for encoder-only runs."""
    cfg = OmegaConf.load(found.root / "config.yaml")
    for name, node in (cfg.get("objective") or {}).items():
        if node.get("decoder") is not None:
            decoder = build(node.decoder, "decoder")
            _load_prefixed(decoder, state, f"objectives.{name}.decoder.", str(found.weights))
            return decoder
    return None


def _hf_modules(found: _Found):
    from clozelab.model.embeddings import BertEmbeddings
    from clozelab.model.encoder import TransformerEncoder
    from clozelab.model.hf import kwargs_from_hf_config
    from clozelab.model.hf_xlnet import xlnet_modules

    config = read_hf_config(found.root)
    if config.get("model_type") == "xlnet":
        return xlnet_modules(config)
    kwargs = kwargs_from_hf_config(config)
    return BertEmbeddings(**kwargs["embedding"]), TransformerEncoder(**kwargs["encoder"])


def _from_hf(found: _Found) -> Backbone:
    from clozelab.model.hf import from_hf_state_dict
    from clozelab.model.hf_xlnet import from_hf_xlnet_state_dict

    embedding, encoder = _hf_modules(found)
    state = read_hf_weights(found.root)
    family = encoder.hf_model_type  # the body _hf_modules built for config.json's model_type
    loader = from_hf_xlnet_state_dict if family == "xlnet" else from_hf_state_dict
    report = loader(state, embedding, encoder)
    if report["missing"]:
        raise config_error(
            "checkpoint",
            str(found.weights),
            f"missing {family.upper()} weights {report['missing'][:3]}",
            f"give a complete HF {family.upper()} checkpoint",
        )
    pooler = None
    for prefix in ("pooler.", "bert.pooler."):
        if f"{prefix}dense.weight" in state:
            pooler = Pooler(encoder.hidden_size)
            pooler.dense.weight.data.copy_(state[f"{prefix}dense.weight"])
            pooler.dense.bias.data.copy_(state[f"{prefix}dense.bias"])
    return Backbone(embedding, encoder, load_tokenizer(found.root), pooler, str(found.root))


def _random(like: str | None, arch: DictConfig | None, tokenizer_path: str | None) -> Backbone:
    if like:
        found = _locate(Path(like).expanduser())
        if found.kind == "run":
            cfg = OmegaConf.load(found.root / "config.yaml")
            embedding, encoder = build(cfg.embedding, "embedding"), build(cfg.encoder, "encoder")
        else:
            embedding, encoder = _hf_modules(found)
        tokenizer = load_tokenizer(found.root)
        embedding.bind_tokenizer(tokenizer)
        return Backbone(embedding, encoder, tokenizer, None, "none")
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
    """The body named by ``checkpoint`` (see the module docstring); ``checkpoint`` none/null
    builds a random one like ``like`` or from ``arch`` (a config with ``model``, ``embedding``,
    ``encoder`` nodes) and the tokenizer at ``tokenizer``."""
    if checkpoint is None or str(checkpoint).lower() in NONE:
        return _random(like, arch, tokenizer)
    found = _locate(Path(str(checkpoint)).expanduser())
    backbone = _from_run(found) if found.kind == "run" else _from_hf(found)
    log.info("Loaded %s backbone from %s", found.kind, found.root)
    return backbone


def is_run_dir(checkpoint: str | Path | None) -> Path | None:
    """The run directory ``checkpoint`` belongs to, if it is a clozelab run (dir or .ckpt)."""
    if checkpoint is None or str(checkpoint).lower() in NONE:
        return None
    try:
        found = _locate(Path(str(checkpoint)).expanduser())
    except Exception:
        return None
    return found.root if found.kind == "run" else None
