"""Offline tasks from data that ships inside installed packages (the ``bundled`` suite).

- ``polarity``: the 200 movie-review sentences (Pang & Lee polarity, ``__label__pos|neg``) in
  gensim's test data; fine-tuned sentence classification on a fixed split.
- ``simlex999`` / ``wordsim353``: word-similarity sets in gensim's test data; zero-shot, the
  Spearman correlation of human scores with the cosine of mean-pooled subword vectors (of the
  layers ``task.layers``: the last one, or the average of several, via ``Backbone.embed``).
- ``chatterbot``: response (dialogue) selection on the English conversations of
  ``chatterbot-corpus``; zero-shot, the true reply ranked among distractors by the cosine of
  mean-pooled vectors (accuracy = recall@1, and MRR).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor
from torchmetrics.functional import spearman_corrcoef

from clozelab.core.errors import config_error
from clozelab.data.packages import package_dir
from clozelab.tasks.backbone import Backbone
from clozelab.tasks.base import Task
from clozelab.tasks.bundled_data import gensim_file, read_conversations, read_word_pairs


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


class _ZeroShot(Task):
    """Scored on the frozen encoder's mean-pooled vectors, without training."""

    zero_shot = True
    default_metrics = ("spearman",)

    def protocol(self, mode: str) -> dict:
        layers = self.cfg.get("layers", -1)
        layers = layers if isinstance(layers, int) else [int(i) for i in layers]
        return {"training": "none (zero-shot, frozen encoder, mean-pooled)", "layers": layers}


class WordSimilarityTask(_ZeroShot):
    """Spearman correlation of human scores with the cosine of word vectors (SimLex, WordSim)."""

    kind = "word_similarity"

    def score_zero_shot(self, backbone, seeds) -> list[dict]:
        return [word_similarity(backbone, self.cfg)] * len(seeds)  # deterministic


class ResponseSelectionTask(_ZeroShot):
    """The true reply ranked among distractors by cosine (chatterbot; recall@1 and MRR)."""

    kind = "response_selection"

    def score_zero_shot(self, backbone, seeds) -> list[dict]:
        return response_selection(backbone, self.cfg, seeds)
