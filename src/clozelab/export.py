"""``clozelab export RUN_DIR OUT_DIR``: a run as an HF transformers BERT directory.

The directory holds ``config.json`` (``hidden_act`` "gelu" for the exact-erf GELU),
``model.safetensors`` in the ``BertForPreTraining`` key layout (SPECS §15; the tied decoder
aliases are left out, as safetensors saves do, and transformers re-ties them) and the tokenizer
files (``tokenizer.json``, ``vocab.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``),
so ``transformers.BertForPreTraining.from_pretrained(OUT_DIR)`` and
``AutoTokenizer.from_pretrained(OUT_DIR)`` load it with no missing or unexpected keys.
A completed ``clozelab pretrain`` run writes the same directory to ``RUN_DIR/hf/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from torch import nn

from clozelab.checkpoint import user_mode
from clozelab.errors import ClozelabError, config_error

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
    from safetensors.torch import save_file

    from clozelab.model.hf import hf_config_dict, to_hf_state_dict

    out = Path(out_dir)
    config = hf_config_dict(embedding, encoder, mlm=mlm, nsp=nsp, torch_dtype="float32")
    state = to_hf_state_dict(embedding, encoder, mlm, nsp, include_tied=False)
    if mlm is None and nsp is None:  # BertModel layout: no prefix
        state = to_hf_state_dict(embedding, encoder, prefix="", include_tied=False)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    user_mode(tmp)  # safetensors creates its files 0600
    os.replace(tmp, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")
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
    return out


def check_out_dir(out_dir: Path, force: bool) -> None:
    """OUT_DIR must be a directory that is new, empty, or (``force``) may be overwritten."""
    if out_dir.exists() and not out_dir.is_dir():
        raise config_error(
            "OUT_DIR", str(out_dir), "exists and is not a directory",
            "give a new directory path (the export writes config.json, model.safetensors and the "
            "tokenizer files into it)",
        )  # fmt: skip
    present = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if present and not force:
        raise config_error(
            "OUT_DIR", str(out_dir), f"is not empty (it holds {present[:6]}"
            f"{' ...' if len(present) > 6 else ''}); the export would overwrite files there",
            "give a new or empty directory, or add --force to overwrite",
        )  # fmt: skip


def export(run_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Export a run directory (or a checkpoint inside one) to an HF BERT directory (a new or
    empty ``out_dir``; ``force`` overwrites the files of a non-empty one)."""
    from clozelab.api import _run_checkpoint, load

    run_dir = Path(run_dir).expanduser()
    check_out_dir(Path(out_dir).expanduser(), force)
    model = load(run_dir)
    source_dir, checkpoint = _run_checkpoint(run_dir)
    out = write_hf_dir(out_dir, model.embedding, model.encoder, model.mlm, model.nsp,
                       source_dir / "tokenizer")  # fmt: skip
    log.info("Exported %s to %s", checkpoint, out)
    return out


def export_after_run(module: nn.Module, run_dir: str | Path) -> Path | None:
    """Write ``RUN_DIR/hf/`` at the end of a completed pre-training run (pretrain.py hook).

    Runs whose components are not an HF BERT (other encoders or embeddings) are skipped with a
    warning that says why; the run's result stands either way.
    """
    from clozelab.api import _heads

    run_dir = Path(run_dir)
    mlm, nsp = _heads(dict(module.objectives))
    try:
        out = write_hf_dir(run_dir / "hf", module.embedding, module.encoder, mlm, nsp,
                           run_dir / "tokenizer")  # fmt: skip
    except ClozelabError as exc:
        log.warning("No HF export in %s/hf: %s", run_dir, exc)
        return None
    log.info("HF transformers export: %s", out)
    return out


def main(argv: list[str]) -> None:
    """``clozelab export RUN_DIR OUT_DIR`` (no Hydra: two positional paths)."""
    parser = argparse.ArgumentParser(
        prog="clozelab export",
        description="Write a run (or a checkpoint file inside one) as an HF transformers BERT "
        "directory: config.json, model.safetensors, tokenizer files.",
    )
    parser.add_argument("run_dir", help="a clozelab run directory or its checkpoints/*.ckpt")
    parser.add_argument("out_dir", help="the directory to write (created if missing)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty OUT_DIR, overwriting its files")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        out = export(args.run_dir, args.out_dir, force=args.force)
    except ClozelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"exported {args.run_dir} -> {out}")
