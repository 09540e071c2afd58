"""The run directory and the files clozelab reads and writes: the one owner of that layout.

A pre-training run writes one directory::

    RUN_DIR/config.yaml            the resolved config
    RUN_DIR/metrics.json           the final summary
    RUN_DIR/checkpoints/*.ckpt     Lightning checkpoints (last.ckpt, step-N.ckpt)
    RUN_DIR/tokenizer/             the tokenizer files
    RUN_DIR/hf/                    the HF transformers export (config.json + model.safetensors)
    RUN_DIR/eval/<task>.json       downstream results

``locate`` tells a run directory (or a checkpoint inside one) from an HF BERT directory;
``run_checkpoint`` finds a run's checkpoint; ``read_checkpoint_state`` / ``read_hf_weights`` read
weights as tensors only (``weights_only=True``: no pickled code runs); ``atomic_write`` /
``write_json`` write a file under a temporary name in the same directory and rename it, so a
crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clozelab.core.errors import ClozelabError, config_error

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# ---------------------------------------------------------------------------- atomic writes
def current_umask() -> int:
    """The process's file-mode creation mask (``os.umask`` can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def user_mode(path: str | Path) -> None:
    """Give a file written through a private temporary (``mkstemp``: 0600; safetensors: 0600)
    the mode an ordinary ``open()`` would: 0666 less the umask, so a shared cluster's group can
    read a checkpoint or an export just like the other files of the run."""
    os.chmod(path, 0o666 & ~current_umask())


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``
    (with the user's usual file mode, whatever mode ``write`` created it with)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        user_mode(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, "utf-8"))


def write_json(path: str | Path, payload: Any, *, indent: int | None = 2, sort_keys=True) -> Path:
    """Atomically write ``payload`` as JSON (indented, sorted keys unless told otherwise)."""
    return write_text(path, json.dumps(payload, indent=indent, sort_keys=sort_keys))


def read_json(path: str | Path) -> dict:
    """The JSON object in ``path``; ``{}`` when the file is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------- finding runs
def is_hf_dir(path: Path) -> bool:
    """An HF transformers directory: ``config.json`` and a weights file."""
    return (path / "config.json").is_file() and any((path / f).is_file() for f in HF_WEIGHT_FILES)


def is_run_dir(path: Path) -> bool:
    """A clozelab run directory: it has its ``config.yaml``."""
    return (path / CONFIG_FILE).is_file()


def run_checkpoint(path: str | Path, key: str = "path") -> tuple[Path, Path]:
    """(run directory, checkpoint file) for a run directory or a checkpoint inside one: the run's
    ``checkpoints/last.ckpt``, else its newest ``checkpoints/*.ckpt``."""
    path = Path(path)
    if path.is_file():
        for run_dir in (path.parent.parent, path.parent):
            if is_run_dir(run_dir):
                return run_dir, path
        raise config_error(
            key,
            str(path),
            "a checkpoint outside a clozelab run directory (no config.yaml two levels up)",
            "pass the run directory, or keep the checkpoint in RUN_DIR/checkpoints/",
        )
    last = path / CHECKPOINT_DIR / LAST_CHECKPOINT
    if last.is_file():
        return path, last
    steps = sorted((path / CHECKPOINT_DIR).glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if steps:
        return path, steps[-1]
    raise config_error(
        key,
        str(path),
        "the run directory has no checkpoints/*.ckpt",
        "pass a run that has trained at least until its first checkpoint",
    )


def locate(path: str | Path, key: str = "path") -> tuple[str, Path]:
    """``("run", path)`` for a run directory or a checkpoint file, ``("hf", directory)`` for an HF
    BERT directory (or a weights file in one, or a run's ``hf/`` export when it has no config)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise config_error(
            key, str(path), "no such file or directory", "give a run dir, a .ckpt or an HF dir"
        )
    if path.is_file() and path.name in HF_WEIGHT_FILES:
        return "hf", path.parent
    if path.is_dir() and is_hf_dir(path):
        return "hf", path
    if path.is_file() or is_run_dir(path):
        return "run", path
    for sub in ("hf", "model"):  # a run's export; a packaged model's folder
        if path.is_dir() and is_hf_dir(path / sub):
            return "hf", path / sub
    raise config_error(
        key,
        str(path),
        "neither a clozelab run directory (config.yaml + checkpoints/), a checkpoint file, nor an "
        "HF BERT directory (config.json + model.safetensors or pytorch_model.bin)",
        "point to one of those",
    )


def run_dir_of(path: str | Path | None) -> Path | None:
    """The clozelab run directory ``path`` (a run directory or a checkpoint inside one) belongs
    to; None for anything else (an HF directory, ``none``, a path that is not there)."""
    if path is None:
        return None
    try:
        kind, resolved = locate(path)
        return run_checkpoint(resolved)[0] if kind == "run" else None
    except ClozelabError:
        return None


# ---------------------------------------------------------------------------- reading weights
def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's load errors run to paragraphs)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(exc).__name__}: {line if len(line) <= 160 else line[:157] + '...'}"


def state_differences(stored: dict, expected: dict, check_missing: bool = True) -> list[str]:
    """How the weights ``stored`` differ from a module's state ``expected`` (names and shapes),
    by cause: the vocabulary (rows of the token table), other sizes, other parameters."""
    missing = sorted(set(expected) - set(stored)) if check_missing else []
    unexpected = sorted(set(stored) - set(expected)) if check_missing else []
    common = sorted(set(expected) & set(stored))

    def shape(k):
        return f"{k}: checkpoint {tuple(stored[k].shape)} vs config {tuple(expected[k].shape)}"

    def rows_differ(k):  # rows of the token table: the vocabulary
        return "word_embeddings" in k and stored[k].shape[:1] != expected[k].shape[:1]

    vocab = [shape(k) for k in common if rows_differ(k)]
    differ = [k for k in common if tuple(stored[k].shape) != tuple(expected[k].shape)]
    others = [shape(k) for k in differ if not rows_differ(k)]
    problems = []
    if vocab:
        problems.append(f"a different vocabulary ({vocab[0]})")
    if others:
        problems.append(f"different layer sizes ({'; '.join(others[:2])})")
    if missing or unexpected:
        problems.append(
            f"a different architecture (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return problems


def load_state_checked(
    module: torch.nn.Module, state: dict, source: str, key: str = "checkpoint", fix: str = ""
) -> None:
    """``module.load_state_dict(state, strict=False)`` after checking the shapes: a checkpoint of
    other sizes is a ClozelabError naming the difference (under ``key``, with ``fix``), not a
    wall of size-mismatch lines."""
    problems = state_differences(state, module.state_dict(), check_missing=False)
    if problems:
        fix = fix or (
            "pass the checkpoint of the run whose config.yaml and tokenizer/ sit beside it "
            "(config.yaml was changed, or the file was copied from another run)"
        )
        raise ClozelabError(
            f"{key} {source}: its weights do not fit the model its config describes: "
            f"{'; '.join(problems)}. Fix: {fix}."
        )
    module.load_state_dict(state, strict=False)


def read_hf_weights(directory: Path) -> dict[str, Tensor]:
    """The state dict of an HF directory (safetensors preferred), tensors only; a damaged file is
    a ClozelabError naming it."""
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


#: the ``config.json`` keys each HF family clozelab reads must have (``model_type`` -> keys).
HF_CONFIG_KEYS = {
    "bert": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"),
    "ernie": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"),
    "xlnet": ("vocab_size", "d_model", "n_layer", "n_head", "d_inner"),
}


def hf_model_type(directory: Path) -> str | None:
    """``model_type`` of an HF directory's ``config.json`` (None when unreadable or absent)."""
    try:
        config = json.loads((directory / "config.json").read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None


def read_hf_config(directory: Path) -> dict:
    """``config.json`` of an HF BERT, ERNIE or XLNet directory, parsed and checked to hold the
    sizes of its ``model_type`` (``HF_CONFIG_KEYS``; BERT's when absent)."""
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise config_error(
            "checkpoint",
            str(path),
            f"not a readable JSON file ({first_line(exc)})",
            "export the model again (clozelab export RUN_DIR OUT_DIR) or restore config.json",
        ) from None
    named = config.get("model_type") if isinstance(config, dict) else None
    family = named if named in HF_CONFIG_KEYS else "bert"
    needed = HF_CONFIG_KEYS[family]
    missing = [k for k in needed if not isinstance(config, dict) or k not in config]
    if missing:
        problem = f"not a {family.upper()} config.json (no {missing})"
        if named not in (None, family):  # e.g. the hf/ folder of a T5 or BART run
            problem = (
                f"an HF {named} config.json, and only BERT, ERNIE and XLNet directories load here"
            )
        raise config_error(
            "checkpoint",
            str(path),
            problem,
            "point to an HF BERT or ERNIE directory (config.json of a BertModel / "
            "BertForPreTraining / ErnieForMaskedLM ...) or an HF XLNet directory (XLNetModel / "
            "XLNetLMHeadModel); for the hf/ folder of a "
            "clozelab run, give the run directory above it (checkpoint=RUN)",
        )
    return config


def read_checkpoint_state(checkpoint: Path, key: str = "checkpoint") -> dict[str, Tensor]:
    """The module state dict of a Lightning checkpoint (tensors only, no pickled objects)."""
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # torn, truncated, random bytes, not a checkpoint at all
        raise config_error(
            key,
            str(checkpoint),
            f"unreadable, damaged or not a PyTorch checkpoint ({first_line(exc)})",
            "pass a whole checkpoint written by clozelab pretrain (checkpoints/last.ckpt, or an "
            "earlier checkpoints/step-N.ckpt of the run)",
        ) from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise config_error(
            key,
            str(checkpoint),
            "holds no state_dict",
            "pass a checkpoint written by clozelab pretrain",
        )
    return state
