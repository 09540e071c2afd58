"""The data of the bundled offline tasks, read from files that ship inside installed packages:
gensim's test data (the polarity sentences, SimLex-999, WordSim-353) and chatterbot-corpus's
English conversations. ``tasks/bundled.py`` scores the zero-shot ones."""

from __future__ import annotations

import itertools
from pathlib import Path

from omegaconf import DictConfig

from clozelab.core.errors import config_error
from clozelab.data.dialogue import read_chatterbot
from clozelab.data.packages import package_dir
from clozelab.tasks.examples import TextExample, holdout_split


def gensim_file(name: str) -> Path:
    path = package_dir("gensim") / "test" / "test_data" / name
    if not path.is_file():
        raise config_error("task.file", name, f"not in gensim's test data ({path})", "fix it")
    return path


def read_polarity(path: Path) -> list[TextExample]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # the file mixes in Windows-1252 punctuation
        text = raw.decode("cp1252", errors="replace")
    examples = []
    for line in text.splitlines():
        label, _, text = line.strip().partition(" ")
        if label.startswith("__label__") and text.strip():
            examples.append(TextExample(text.strip(), None, label[len("__label__") :]))
    return examples


def read_word_pairs(path: Path) -> list[tuple[str, str, float]]:
    """``word1<TAB>word2<TAB>score`` lines; ``#`` comment lines skipped."""
    pairs = []
    for line in path.read_text("utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        a, b, value = line.split("\t")[:3]
        pairs.append((a, b, float(value)))
    return pairs


def read_conversations(directory: Path) -> list[tuple[str, str]]:
    """(utterance, reply) pairs of consecutive turns in every ``*.yml`` conversation file."""
    return [pair for turns in read_chatterbot(directory) for pair in itertools.pairwise(turns)]


def read_bundled(task: DictConfig) -> dict[str, list]:
    """Train/validation splits of the fine-tuned bundled tasks (``polarity``)."""
    if task.source == "polarity":
        examples = read_polarity(gensim_file("pang_lee_polarity.cor"))
        train, validation = holdout_split(examples, float(task.get("holdout", 0.75)))
        return {"train": train, "validation": validation}
    raise config_error(
        "task.source", task.source, "not a fine-tuned bundled task", "use source=polarity"
    )
