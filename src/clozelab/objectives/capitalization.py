"""Capitalisation prediction (ERNIE 2.0, Sun et al. 2020; SPECS.md §20).

For each word of the (lowercased) input, predict whether it starts with an upper-case letter in
the original text: a 2-way ``TokenClassifier`` on the word's first token, reading
``case_labels`` (``clozelab.data.token_features``: flags stored in the shards at preprocessing
with ``data.case_flags=true``, taken from the cased text, so an uncased vocabulary works; that is
the task's point). Refused with a cased tokenizer (``tokenizer.lowercase=false``): the input
would show the answer. Logs ``capitalization_loss`` and ``capitalization_acc``.
"""

from __future__ import annotations

from clozelab.core.errors import config_error
from clozelab.objectives.token_classifier import TokenClassifier


class CapitalizationPrediction(TokenClassifier):
    """Is this word capitalised in the original text; reads ``batch["case_labels"]`` [B, T]."""

    name = "capitalization"
    requires = ("case_labels",)
    label_key = "case_labels"
    requires_fix = "set data.case_flags=true (case flags stored in the shards at preprocessing)"

    @classmethod
    def check_config(cls, cfg, name: str) -> None:
        tokenizer = cfg.get("tokenizer") or {}
        if tokenizer.get("lowercase") is False:
            raise config_error(
                "tokenizer.lowercase",
                False,
                f"objective.{name} predicts the case the lowercased input has lost; with a cased "
                "vocabulary the input shows it and the task is trivial",
                "set tokenizer.lowercase=true (ERNIE 2.0 trains it on uncased input)",
            )
