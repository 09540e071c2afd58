"""``clozelab export RUN_DIR OUT_DIR``: a run as an HF transformers BERT directory (an
encoder-decoder run: a T5ForConditionalGeneration / BartForConditionalGeneration directory; an
XLNet run: an XLNetLMHeadModel directory; an ERNIE 2.0 run: an HF ERNIE one with its task table).

The directory (``config.json``, ``model.safetensors`` in the ``BertForPreTraining`` key layout, the
tokenizer files) is what ``transformers.BertForPreTraining.from_pretrained(OUT_DIR)`` and
``AutoTokenizer.from_pretrained(OUT_DIR)`` load; see ``clozelab.training.hf_export``. A completed
``clozelab pretrain`` run writes the same directory to ``RUN_DIR/hf/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from clozelab.core.errors import ClozelabError, config_error
from clozelab.training.hf_export import run_corruption_keys, run_task_order, write_run_hf_dir
from clozelab.training.loading import load_checkpoint

log = logging.getLogger(__name__)


def check_out_dir(out_dir: Path, force: bool) -> None:
    """OUT_DIR must be a directory that is new, empty, or (``force``) may be overwritten."""
    if out_dir.exists() and not out_dir.is_dir():
        raise config_error(
            "OUT_DIR",
            str(out_dir),
            "exists and is not a directory",
            "give a new directory path (the export writes config.json, model.safetensors and the "
            "tokenizer files into it)",
        )
    present = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if present and not force:
        raise config_error(
            "OUT_DIR",
            str(out_dir),
            f"is not empty (it holds {present[:6]}"
            f"{' ...' if len(present) > 6 else ''}); the export would overwrite files there",
            "give a new or empty directory, or add --force to overwrite",
        )


def export(run_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Export a run directory (or a checkpoint inside one) to an HF BERT directory (a new or
    empty ``out_dir``; ``force`` overwrites the files of a non-empty one)."""
    check_out_dir(Path(out_dir).expanduser(), force)
    run_dir = Path(run_dir).expanduser()
    loaded = load_checkpoint(run_dir)
    if loaded.kind != "run":
        raise config_error(
            "RUN_DIR",
            str(run_dir),
            "an HF directory already, not a clozelab run",
            "give a clozelab run directory (or a checkpoint inside one)",
        )
    loaded.check_complete()
    out = write_run_hf_dir(
        out_dir,
        loaded.embedding,
        loaded.encoder,
        loaded.objectives,
        loaded.tokenizer_dir,
        run_corruption_keys(loaded.root),
        run_task_order(loaded.root, loaded.objectives),
    )
    log.info("Exported %s to %s", loaded.weights, out)
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
    parser.add_argument(
        "--force", action="store_true", help="write into a non-empty OUT_DIR, overwriting its files"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        out = export(args.run_dir, args.out_dir, force=args.force)
    except ClozelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"exported {args.run_dir} -> {out}")
