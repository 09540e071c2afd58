"""Offline tasks from data that ships inside installed packages (the ``bundled`` suite).

- ``polarity``: the 200 movie-review sentences (Pang & Lee polarity, ``__label__pos|neg``) in
  gensim's test data; fine-tuned sentence classification on a fixed split.
- ``simlex999`` / ``wordsim353``: word-similarity sets in gensim's test data; zero-shot, the
  Spearman correlation of human scores with the cosine of mean-pooled subword vectors (of the
  layers ``task.layers``: the last one, or the average of several, via ``Backbone.embed``).
- ``chatterbot``: response selection on the English conversations of ``chatterbot-corpus``;
  zero-shot, the true reply ranked among distractors by the cosine of mean-pooled vectors
  (accuracy = recall@1, and MRR).
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor
from torchmetrics.functional import spearman_corrcoef

from clozelab.data.dialogue import read_chatterbot
from clozelab.data.packages import package_dir
from clozelab.errors import config_error
from clozelab.tasks.backbone import Backbone
from clozelab.tasks.readers import TextExample, _holdout

ZERO_SHOT = ("word_similarity", "response_selection")


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
        train, validation = _holdout(examples, float(task.get("holdout", 0.75)))
        return {"train": train, "validation": validation}
    raise config_error(
        "task.source", task.source, "not a fine-tuned bundled task", "use source=polarity"
    )


def text_vectors(backbone: Backbone, task: DictConfig, texts: list[str]) -> Tensor:
    """Mean-pooled vectors of ``texts`` at ``task.layers`` (-1: the last layer; a list is
    averaged, e.g. [-4, -3, -2, -1]: the average of the last four layers): [N, H]."""
    layers = task.get("layers", -1)
    layers = layers if isinstance(layers, int) else [int(i) for i in layers]
    return backbone.embed(texts, layers=layers, pool="mean")


def word_similarity(backbone: Backbone, task: DictConfig) -> dict[str, float]:
    pairs = read_word_pairs(gensim_file(task.file))
    words = sorted({w for a, b, _ in pairs for w in (a, b)})
    vectors = text_vectors(backbone, task, words)
    index = {w: i for i, w in enumerate(words)}
    a = vectors[[index[p[0]] for p in pairs]]
    b = vectors[[index[p[1]] for p in pairs]]
    cosine = F.cosine_similarity(a, b, dim=-1).double()
    human = torch.tensor([p[2] for p in pairs], dtype=torch.double)
    return {"spearman": float(spearman_corrcoef(cosine, human)), "pairs": float(len(pairs))}


def response_selection(
    backbone: Backbone, task: DictConfig, seeds: list[int]
) -> list[dict[str, float]]:
    """One result per seed: the seed draws the distractors (the scored pairs are fixed)."""
    directory = package_dir("chatterbot_corpus") / "data" / str(task.get("language", "english"))
    pairs = list(dict.fromkeys(read_conversations(directory)))  # exact duplicates once
    if task.get("max_examples") and len(pairs) > int(task.max_examples):
        pairs = random.Random(0).sample(pairs, int(task.max_examples))
    replies = sorted({r for _, r in pairs})
    n_candidates = int(task.get("candidates", 10))
    if len(replies) < n_candidates:
        raise config_error("task.candidates", n_candidates, "more than the replies", "lower it")
    texts = sorted({u for u, _ in pairs} | set(replies))
    vectors = F.normalize(text_vectors(backbone, task, texts), dim=-1)
    index = {t: i for i, t in enumerate(texts)}
    results = []
    for seed in seeds:
        rng = random.Random(seed)
        hits, reciprocal = 0, 0.0
        for utterance, reply in pairs:
            distractors: list[str] = []
            while len(distractors) < n_candidates - 1:
                candidate = replies[rng.randrange(len(replies))]
                if candidate != reply and candidate not in distractors:
                    distractors.append(candidate)
            candidates = [reply, *distractors]
            sims = vectors[[index[c] for c in candidates]] @ vectors[index[utterance]]
            rank = int((sims > sims[0]).sum()) + 1  # ties count in the true reply's favour
            hits += rank == 1
            reciprocal += 1.0 / rank
        n = len(pairs)
        results.append({"accuracy": hits / n, "mrr": reciprocal / n, "pairs": float(n)})
    return results


def score_zero_shot(backbone: Backbone, task: DictConfig, seeds: list[int]) -> list[dict]:
    """One metrics dict per seed (word similarity is deterministic: the same for each)."""
    if task.kind == "word_similarity":
        return [word_similarity(backbone, task)] * len(seeds)
    if task.kind == "response_selection":
        return response_selection(backbone, task, seeds)
    raise config_error("task.kind", task.kind, "not a zero-shot task", f"use one of {ZERO_SHOT}")
