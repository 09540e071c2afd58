"""The Python API (``clozelab.load``, ``clozelab.load_tokenizer``) and ``model.init_from``.

``load`` takes a clozelab run directory (``config.yaml`` + ``checkpoints/``), a Lightning
checkpoint file of such a run, or an HF BERT directory (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``), and returns a ``ClozelabModel`` in eval mode::

    model = clozelab.load("outputs/2026-01-01/10-00-00")
    tok = clozelab.load_tokenizer("outputs/2026-01-01/10-00-00")
    batch = tok(["a sentence", "another one"], padding=True, return_tensors="pt")
    out = model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    out.last_hidden_state  # [B, T, H]; out.hidden_states: embedding output + every layer
    model.mlm_logits(batch["input_ids"], batch["attention_mask"])  # [B, T, V]
    model.embed(["a sentence", "another one"], layers=[-4, -3, -2, -1], pool="mean")  # [2, H]

``init_components`` applies ``model.init_from`` (an HF BERT directory or a clozelab run
directory / checkpoint) to freshly built components before pre-training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clozelab.checkpoint import first_line, load_checkpoint, load_state_checked
from clozelab.errors import ClozelabError, config_error

log = logging.getLogger(__name__)

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WORD_KEYS = ("bert.embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight")


# ---------------------------------------------------------------------------- the model object
class ClozelabModel(nn.Module):
    """An embedding, an encoder and (when the checkpoint has them) the MLM and NSP heads.

    Attributes:
        embedding, encoder: the body.
        mlm, nsp: the MLM / NSP objectives (their heads), or None.
        source: where the weights came from.
        load_report: ``{"missing": [...], "unexpected": [...]}`` of the weight loading.
    """

    def __init__(
        self, embedding, encoder, mlm=None, nsp=None, source: str = "", report=None, tokenizer=None
    ):
        super().__init__()
        self.embedding, self.encoder, self.mlm, self.nsp = embedding, encoder, mlm, nsp
        self.source = source
        self.load_report = report or {"missing": [], "unexpected": []}
        self.tokenizer = tokenizer  # clozelab Tokenizer (or a path to load it from), for embed

    @property
    def vocab_size(self) -> int:
        return int(self.embedding.word_embeddings.weight.shape[0])

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ):
        """``EncoderOutput``: ``.last_hidden_state`` [B, T, H] and ``.hidden_states`` (the
        embedding output, then every layer's output, as HF's ``output_hidden_states``)."""
        input_ids = _as_batch(input_ids)
        hidden = self.embedding(input_ids, _as_batch(token_type_ids))
        return self.encoder(hidden, _as_batch(attention_mask), output_hidden_states=True)

    def mlm_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Masked-LM logits [B, T, V] at every position (tied decoder)."""
        if self.mlm is None:
            raise ClozelabError(
                f"{self.source}: this checkpoint has no MLM head. Fix: load a checkpoint trained "
                "with objective=[mlm,...] or an HF BertForPreTraining / BertForMaskedLM directory."
            )
        hidden = self.encode(input_ids, attention_mask, token_type_ids).last_hidden_state
        return self.mlm.logits(hidden, self.embedding)

    def nsp_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Next-sentence logits [B, 2] (0 = B follows A)."""
        if self.nsp is None:
            raise ClozelabError(
                f"{self.source}: this checkpoint has no NSP head. Fix: load a checkpoint trained "
                "with objective=[mlm,nsp] or an HF BertForPreTraining directory."
            )
        hidden = self.encode(input_ids, attention_mask, token_type_ids).last_hidden_state
        return self.nsp.logits(hidden)

    def embed(self, texts, layers=-1, pool: str = "mean", batch_size: int = 64):
        """Vectors of ``texts`` in one call, each encoded alone as ``[CLS] text [SEP]``.

        ``layers``: a hidden-state index (-1: the last layer, 0: the embedding output) or a list
        of them, averaged (``[-4, -3, -2, -1]``: the average of the last four layers, the seeds'
        feature-based recipe). ``pool``: ``mean`` over the text's tokens ([CLS]/[SEP] excluded)
        or ``cls`` -> ``[N, H]``; ``none`` -> one ``[n_tokens, H]`` tensor per text.
        """
        from clozelab.model.layer_pool import embed_texts

        if self.tokenizer is None:
            raise ClozelabError(
                f"{self.source}: no tokenizer is known for this model. Fix: load it with "
                "clozelab.load(path) from a run or HF directory that holds its tokenizer, or set "
                "model.tokenizer = clozelab.data.tokenizer.load_tokenizer(path)."
            )
        if isinstance(self.tokenizer, (str, Path)):
            from clozelab.data.tokenizer import load_tokenizer as load_clozelab_tokenizer

            self.tokenizer = load_clozelab_tokenizer(self.tokenizer)
        self.eval()
        limit = int(getattr(self.embedding, "max_position_embeddings", 512))

        def encode(input_ids, attention_mask, token_type_ids):
            return self.encode(input_ids, attention_mask, token_type_ids).hidden_states

        return embed_texts(
            encode, self.tokenizer, texts, layers=layers, pool=pool, max_length=limit,
            batch_size=batch_size,
        )  # fmt: skip

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.encode(input_ids, attention_mask, token_type_ids)


def _as_batch(x: Tensor | None) -> Tensor | None:
    if x is None:
        return None
    x = torch.as_tensor(x)
    return x[None] if x.dim() == 1 else x


# ---------------------------------------------------------------------------- path resolution
def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / f).is_file() for f in HF_WEIGHT_FILES)


def _run_checkpoint(path: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint file) for a run directory or a checkpoint inside one."""
    if path.is_file():
        for run_dir in (path.parent.parent, path.parent):
            if (run_dir / "config.yaml").is_file():
                return run_dir, path
        raise config_error(
            "path",
            str(path),
            "a checkpoint outside a clozelab run directory (no config.yaml two levels up)",
            "pass the run directory, or keep the checkpoint in RUN_DIR/checkpoints/",
        )
    last = path / "checkpoints" / "last.ckpt"
    if last.is_file():
        return path, last
    steps = sorted((path / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if steps:
        return path, steps[-1]
    raise config_error(
        "path",
        str(path),
        "the run directory has no checkpoints/*.ckpt",
        "pass a run that has trained at least until its first checkpoint",
    )


def _classify(path: str | Path) -> tuple[str, Path]:
    path = Path(path).expanduser()
    if not path.exists():
        raise config_error(
            "path", str(path), "no such file or directory", "give a run dir, a .ckpt or an HF dir"
        )
    if path.is_file() and path.name in HF_WEIGHT_FILES:
        return "hf", path.parent
    if path.is_dir() and _is_hf_dir(path):
        return "hf", path
    if path.is_file() or (path / "config.yaml").is_file():
        return "run", path
    if path.is_dir() and _is_hf_dir(path / "hf"):
        return "hf", path / "hf"
    raise config_error(
        "path",
        str(path),
        "neither a clozelab run directory (config.yaml + checkpoints/), a checkpoint file, nor an "
        "HF BERT directory (config.json + model.safetensors or pytorch_model.bin)",
        "point to one of those",
    )


def read_hf_weights(directory: Path) -> dict[str, Tensor]:
    """The state dict of an HF directory (safetensors preferred); a damaged file is a
    ClozelabError naming it."""
    path = directory / "model.safetensors"
    try:
        if path.is_file():
            from safetensors.torch import load_file

            return load_file(str(path))
        path = directory / "pytorch_model.bin"
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        problem = f"unreadable, damaged or not a weights file ({first_line(exc)})"
        fix = "export the model again (clozelab export RUN_DIR OUT_DIR) or point to another one"
        raise config_error("checkpoint", str(path), problem, fix) from None


def read_hf_config(directory: Path) -> dict:
    """``config.json`` of an HF BERT directory, parsed and checked to be a BERT config."""
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise config_error(
            "checkpoint", str(path), f"not a readable JSON file ({first_line(exc)})",
            "export the model again (clozelab export RUN_DIR OUT_DIR) or restore config.json",
        ) from None  # fmt: skip
    needed = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in needed if not isinstance(config, dict) or k not in config]
    if missing:
        raise config_error(
            "checkpoint", str(path), f"not a BERT config.json (no {missing})",
            "point to an HF BERT directory (config.json of a BertModel / BertForPreTraining)",
        )  # fmt: skip
    return config


def read_checkpoint_state(checkpoint: Path) -> dict[str, Tensor]:
    """The module state dict of a Lightning checkpoint (tensors only, no pickled objects)."""
    ckpt = load_checkpoint(checkpoint)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise config_error("checkpoint", str(checkpoint), "holds no state_dict",
                           "pass a checkpoint written by clozelab pretrain")  # fmt: skip
    return state


def _heads(objectives: dict[str, nn.Module]) -> tuple[nn.Module | None, nn.Module | None]:
    from clozelab.objectives.mlm import MLM
    from clozelab.objectives.nsp import NSP

    mlm = next((o for o in objectives.values() if isinstance(o, MLM)), None)
    nsp = next((o for o in objectives.values() if isinstance(o, NSP)), None)
    return mlm, nsp


# ---------------------------------------------------------------------------- loaders
def build_run_components(run_dir: Path):
    """Rebuild a run's embedding, encoder and objectives from its ``config.yaml`` and tokenizer."""
    from omegaconf import OmegaConf

    from clozelab.data.tokenizer import load_tokenizer as load_clozelab_tokenizer
    from clozelab.pretrain import build_components

    cfg = OmegaConf.load(run_dir / "config.yaml")
    tokenizer = load_clozelab_tokenizer(run_dir / "tokenizer")
    embedding, encoder, objectives, _ = build_components(cfg, tokenizer)
    return cfg, embedding, encoder, objectives


def _load_run(path: Path) -> ClozelabModel:
    run_dir, checkpoint = _run_checkpoint(path)
    _, embedding, encoder, objectives = build_run_components(run_dir)
    container = nn.Module()
    container.embedding, container.encoder = embedding, encoder
    container.objectives = nn.ModuleDict(objectives)
    state = read_checkpoint_state(checkpoint)
    load_state_checked(container, state, str(checkpoint))
    expected = container.state_dict()
    report = {"missing": sorted(set(expected) - set(state)),
              "unexpected": sorted(set(state) - set(expected))}  # fmt: skip
    if report["missing"]:
        raise config_error(
            "checkpoint",
            str(checkpoint),
            f"lacks weights of the model its config.yaml describes: {report['missing'][:5]}",
            "pass the checkpoint of this run (its config.yaml was changed, or the file is not "
            "a clozelab checkpoint)",
        )
    mlm, nsp = _heads(objectives)
    tokenizer = run_dir / "tokenizer"  # loaded by embed when first needed
    return ClozelabModel(embedding, encoder, mlm, nsp, str(checkpoint), report, tokenizer).eval()


def _load_hf(directory: Path) -> ClozelabModel:
    from clozelab.model.embeddings import BertEmbeddings
    from clozelab.model.encoder import TransformerEncoder
    from clozelab.model.hf import from_hf_state_dict, kwargs_from_hf_config
    from clozelab.objectives.mlm import MLM
    from clozelab.objectives.nsp import NSP

    kw = kwargs_from_hf_config(read_hf_config(directory))
    state = read_hf_weights(directory)
    embedding, encoder = BertEmbeddings(**kw["embedding"]), TransformerEncoder(**kw["encoder"])
    has_mlm = any(k.startswith("cls.predictions.") for k in state)
    has_nsp = any(k.startswith("cls.seq_relationship.") for k in state)
    mlm = MLM(**kw["mlm"]) if has_mlm else None
    nsp = NSP(**kw["nsp"]) if has_nsp else None
    if nsp is not None and not any("pooler." in k for k in state):
        log.warning("%s has an NSP classifier but no pooler; the pooler is left random", directory)
    report = from_hf_state_dict(state, embedding, encoder, mlm, nsp)
    _log_report(str(directory), report)
    return ClozelabModel(embedding, encoder, mlm, nsp, str(directory), report, directory).eval()


def load(path: str | Path) -> ClozelabModel:
    """Load a model from a clozelab run directory, a checkpoint file or an HF BERT directory.

    HF directories load every head their weights hold (``cls.predictions.*`` -> ``mlm``,
    ``cls.seq_relationship.*`` -> ``nsp``); a ``BertModel`` directory loads the body only. The
    model comes back on the CPU, in eval mode, with ``load_report`` telling what was missing or
    left over.
    """
    kind, resolved = _classify(path)
    return _load_hf(resolved) if kind == "hf" else _load_run(resolved)


def load_tokenizer(path: str | Path, **kwargs: Any):
    """A ``transformers.PreTrainedTokenizerFast`` for a run dir, checkpoint or HF directory.

    Encodes with [CLS]/[SEP] and pads on request: ``tok(texts, padding=True,
    return_tensors="pt")`` gives ``input_ids``, ``token_type_ids`` and ``attention_mask`` for
    ``model.encode``. ``kwargs`` go to ``PreTrainedTokenizerFast``.
    """
    from transformers import PreTrainedTokenizerFast

    from clozelab.data.tokenizer import load_tokenizer as load_clozelab_tokenizer

    resolved = Path(path).expanduser()
    if resolved.is_file() and resolved.suffix in (".ckpt", ".safetensors", ".bin"):
        resolved = _run_checkpoint(resolved)[0] if resolved.suffix == ".ckpt" else resolved.parent
    tokenizer = load_clozelab_tokenizer(resolved)
    options = dict(
        tokenizer_object=tokenizer.hf,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=512,
        do_lower_case=tokenizer.lowercase,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    options.update(kwargs)
    return PreTrainedTokenizerFast(**options)


def _log_report(source: str, report: dict[str, list[str]]) -> None:
    if report["missing"]:
        log.warning("%s: %d weights missing, left as initialised: %s", source,
                    len(report["missing"]), report["missing"])  # fmt: skip
    if report["unexpected"]:
        log.warning("%s: %d weights unused: %s", source, len(report["unexpected"]),
                    report["unexpected"])  # fmt: skip
    if not report["missing"] and not report["unexpected"]:
        log.info("%s: every weight loaded", source)


# ---------------------------------------------------------------------------- init_from
def _check_vocab(rows: int, tokenizer, source: str) -> None:
    if rows != tokenizer.vocab_size:
        raise config_error(
            "model.init_from",
            source,
            f"its word embeddings have {rows} rows but the tokenizer has "
            f"{tokenizer.vocab_size} tokens",
            f"use the checkpoint's own tokenizer: tokenizer=pretrained tokenizer.path={source}",
        )


def init_components(
    init_from: str | Path | None,
    embedding: nn.Module,
    encoder: nn.Module,
    objectives: dict[str, nn.Module],
    tokenizer,
) -> dict[str, list[str]] | None:
    """Copy the weights of ``init_from`` into freshly built components (``model.init_from``).

    ``init_from`` is an HF BERT directory (mapped with ``clozelab.model.hf``; the MLM and NSP
    heads load when both sides have them) or a clozelab run directory / checkpoint (loaded by
    module name). Missing and unexpected weights are logged and returned; a vocabulary that
    differs from the tokenizer's, or any shape mismatch, raises a ClozelabError.
    """
    if init_from in (None, ""):
        return None
    kind, resolved = _classify(init_from)
    source = str(init_from)
    if kind == "hf":
        from clozelab.model.hf import from_hf_state_dict

        state = read_hf_weights(resolved)
        word = next((state[k] for k in WORD_KEYS if k in state), None)
        if word is None:
            raise config_error("model.init_from", source, "has no word embeddings",
                               "point to an HF BERT checkpoint")  # fmt: skip
        _check_vocab(word.shape[0], tokenizer, source)
        mlm, nsp = _heads(objectives)
        report = from_hf_state_dict(state, embedding, encoder, mlm, nsp)
    else:
        run_dir, checkpoint = _run_checkpoint(resolved)
        state = read_checkpoint_state(checkpoint)
        word = state.get("embedding.word_embeddings.weight")
        if word is not None:
            _check_vocab(word.shape[0], tokenizer, str(run_dir))
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
    _log_report(f"model.init_from={source}", report)
    return report
