"""The examples downstream readers produce (one dataclass per shape of data), and the held-out
split of one labelled file."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from clozelab.core.errors import config_error


@dataclass
class TextExample:
    """One sentence (or sentence pair) with a class name / index or a real-valued score."""

    text: str
    text_pair: str | None = None
    label: str | int | float | None = None


@dataclass
class TokenExample:
    """A sentence of words and one IOB2 tag per word."""

    words: list[str]
    tags: list[str]


@dataclass
class SpanExample:
    """A sentence of words and its entities as ``(start, end_exclusive, type)`` word spans;
    entities may nest or overlap."""

    words: list[str]
    spans: list[tuple[int, int, str]]


@dataclass
class QAExample:
    """A SQuAD question: answers are texts with character offsets into ``context``."""

    id: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)
    answer_starts: list[int] = field(default_factory=list)
    title: str = ""


def holdout_split(examples: list, fraction: float) -> tuple[list, list]:
    """Split one labelled file into train / validation, whole SQuAD articles kept together."""
    if not 0.0 < fraction < 1.0:
        raise config_error("task.holdout", fraction, "must be in (0, 1)", "use e.g. 0.5")
    if examples and isinstance(examples[0], QAExample):
        titles = list(dict.fromkeys(e.title for e in examples))
        cut = set(titles[: max(1, round(len(titles) * fraction))])
        return [e for e in examples if e.title in cut], [e for e in examples if e.title not in cut]
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    cut = round(len(order) * fraction)
    first, rest = sorted(order[:cut]), sorted(order[cut:])
    return [examples[i] for i in first], [examples[i] for i in rest]
