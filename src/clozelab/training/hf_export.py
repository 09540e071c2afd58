"""A run as an HF transformers BERT directory (``clozelab export``, and ``RUN_DIR/hf/`` at the end
of a completed pre-training run).

The directory holds ``config.json`` (``hidden_act`` "gelu" for the exact-erf GELU),
``model.safetensors`` in the ``BertForPreTraining`` key layout (SPECS §15; the tied decoder
aliases are left out, as safetensors saves do, and transformers re-ties them) and the tokenizer
files (``tokenizer.json``, ``vocab.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``),
so ``transformers.BertForPreTraining.from_pretrained(OUT_DIR)`` and
``AutoTokenizer.from_pretrained(OUT_DIR)`` load it with no missing or unexpected keys.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from torch import nn

from clozelab.core.errors import ClozelabError
from clozelab.training.checkpoint import user_mode
from clozelab.training.components import pretraining_heads, run_decoder

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
SPECIAL_TOKENS_MAP = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def write_hf_dir(
    out_dir: str | Path,
    embedding: nn.Module,
    encoder: nn.Module,
    mlm: nn.Module | None = None,
    nsp: nn.Module | None = None,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write config.json, model.safetensors and the tokenizer files of these modules to ``out_dir``.

    The weights are written to a temporary name and renamed, so a crash leaves no half file.
    Raises a ClozelabError when the modules are not an HF BERT (another embedding or encoder,
    an MLM head with its own activation or epsilon).
    """
    from clozelab.model.hf import hf_config_dict, to_hf_state_dict

    out = Path(out_dir)
    config = hf_config_dict(embedding, encoder, mlm=mlm, nsp=nsp, torch_dtype="float32")
    state = to_hf_state_dict(embedding, encoder, mlm, nsp, include_tied=False)
    if mlm is None and nsp is None:  # BertModel layout: no prefix
        state = to_hf_state_dict(embedding, encoder, prefix="", include_tied=False)
    _write_weights(out, state, config)
    _write_tokenizer(out, tokenizer_dir)
    return out


def _write_weights(out: Path, state: dict, config: dict) -> None:
    """model.safetensors (through a temporary name) and config.json."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    user_mode(tmp)  # safetensors creates its files 0600
    os.replace(tmp, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")


def _write_tokenizer(out: Path, tokenizer_dir: str | Path | None) -> None:
    """The run's tokenizer files and special_tokens_map.json (BERT's special tokens)."""
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, out / name)
        if not (out / "tokenizer_config.json").is_file():
            config = {"tokenizer_class": "BertTokenizer", "model_max_length": 512}
            (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), "utf-8")
        (out / "special_tokens_map.json").write_text(
            json.dumps(SPECIAL_TOKENS_MAP, indent=2), "utf-8"
        )


def write_seq2seq_hf_dir(out_dir: str | Path, embedding: nn.Module, encoder: nn.Module,
                         decoder: nn.Module, tokenizer_dir: str | Path) -> Path:  # fmt: skip
    """An HF T5ForConditionalGeneration / BartForConditionalGeneration directory of these
    modules (``clozelab.model.hf_seq2seq``): pad = [PAD], eos = [SEP] of the run's tokenizer.
    The T5 sentinels are ids past the tokenizer's vocabulary (config vocab_size counts them)."""
    from clozelab.data.tokenizer import load_tokenizer
    from clozelab.model.hf_seq2seq import hf_config_dict, to_hf_state_dict

    tok = load_tokenizer(tokenizer_dir)
    config = hf_config_dict(embedding, encoder, decoder, tok.pad_id, tok.sep_id, tok.cls_id)
    out = Path(out_dir)
    _write_weights(out, to_hf_state_dict(embedding, encoder, decoder, include_tied=False), config)
    _write_tokenizer(out, tokenizer_dir)
    return out


def export_after_run(module: nn.Module, run_dir: str | Path) -> Path | None:
    """Write ``RUN_DIR/hf/`` at the end of a completed pre-training run (pretrain.py).

    Runs whose components are not an HF BERT (other encoders or embeddings) are skipped with a
    warning that says why; the run's result stands either way.
    """
    run_dir = Path(run_dir)
    mlm, nsp = pretraining_heads(dict(module.objectives))
    decoder = run_decoder(dict(module.objectives))
    try:
        if decoder is not None:  # encoder-decoder: T5 / BART layout
            out = write_seq2seq_hf_dir(run_dir / "hf", module.embedding, module.encoder, decoder,
                                       run_dir / "tokenizer")  # fmt: skip
        else:
            out = write_hf_dir(run_dir / "hf", module.embedding, module.encoder, mlm, nsp,
                               run_dir / "tokenizer")  # fmt: skip
    except ClozelabError as exc:
        log.warning("No HF export in %s/hf: %s", run_dir, exc)
        return None
    log.info("HF transformers export: %s", out)
    return out
