"""Helpers shared by the tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import ModuleType

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

WORDS = [
    "the",
    "a",
    "of",
    "in",
    "river",
    "city",
    "music",
    "history",
    "science",
    "north",
    "south",
    "king",
    "queen",
    "army",
    "language",
    "mountain",
    "island",
    "painter",
    "engine",
    "railway",
    "library",
    "theory",
    "planet",
    "ocean",
    "ancient",
    "modern",
    "small",
    "large",
    "early",
    "late",
    "famous",
    "local",
    "national",
    "green",
    "red",
    "old",
    "new",
    "built",
    "wrote",
    "played",
    "studied",
    "crossed",
    "founded",
    "named",
    "described",
    "discovered",
    "opened",
]


def write_text_corpus(path: Path, documents: int = 40, seed: int = 0) -> Path:
    """A BERT-format corpus: one sentence per line, a blank line between documents."""
    rng = random.Random(seed)
    lines = []
    for _ in range(documents):
        for _ in range(rng.randint(3, 12)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 18))]
            lines.append(" ".join(words).capitalize() + ".")
        lines.append("")
    path.write_text("\n".join(lines), "utf-8")
    return path


TINY = [
    "model=tiny",
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "model.num_layers=2",
    "tokenizer.vocab_size=400",
    "data.batch_size=8",
    "data.max_seq_length=64",
    "data.num_workers=0",
    "data.preprocessing_workers=0",
    "data.validation_fraction=0.1",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "callbacks.checkpoint_every_n_steps=3",
    "logger=csv",
    "eval.suite=null",
]


def compose_config(*overrides: str, name: str = "pretrain", hydra: bool = False):
    """A composed config (with the ``hydra`` node when ``hydra``), experiments/sweeps registered."""
    from hydra import compose, initialize_config_dir

    from clozelab.core.config import conf_dir, register_overlays

    register_overlays()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra)


def load_experiment_script(*parts: str) -> ModuleType:
    """The module of a script under ``experiments/`` (not a package), e.g.
    ``load_experiment_script("results", "nsp_ablation", "shared_reference.py")``."""
    from clozelab.core.config import resource_dir

    path = resource_dir("experiments").joinpath(*parts)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def perturbed(*modules):
    """Every parameter of ``modules`` moved off its init (non-zero biases and task rows,
    non-unit LayerNorm), seeded, then eval mode: parity tests then compare real weights."""
    import torch

    torch.manual_seed(3)
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
            module.eval()
    return modules
