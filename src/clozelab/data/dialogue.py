"""Dialogue corpora for ERNIE's dialogue language model (DLM, SPECS.md §11).

A dialogue is a list of turns ``(text, role)`` with role ``Q`` (query, 0) or ``R`` (response, 1).
Sources, chosen by ``data.dialogue.corpus``:

- ``bundled:chatterbot``: the English conversations shipped in the ``chatterbot-corpus`` package
  (``chatterbot_corpus/data/english/*.yml``; the bundled response-selection task reads them too).
- a directory of chatterbot-format ``*.yml`` files, or one such file: ``conversations:`` is a list
  of conversations, each a list of turn strings.
- a ``.jsonl`` file, one dialogue per line, either of::

      {"turns": ["How are you?", "Fine, and you?", "Good."]}
      {"turns": [{"role": "Q", "text": "How are you?"}, {"role": "R", "text": "Fine."}]}

  Plain strings take alternating roles Q, R, Q, ... (as chatterbot's conversations do); objects
  give each turn its role (``Q`` or ``R``, any case). Blank lines are skipped, other keys ignored.

A missing, empty or malformed file is a ClozelabError naming the path, the line and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

from clozelab.core.errors import ClozelabError, config_error
from clozelab.data.packages import package_dir

Q, R = 0, 1
ROLES = {"Q": Q, "R": R}
KEY = "data.dialogue.corpus"
BUNDLED = "bundled:chatterbot"
JSONL_EXAMPLE = (
    '{"turns": ["Hi", "Hello"]} or {"turns": [{"role": "Q", "text": "Hi"}, '
    '{"role": "R", "text": "Hello"}]}'
)

Dialogue = list[tuple[str, int]]


def chatterbot_dir(language: str = "english") -> Path:
    """``chatterbot_corpus/data/<language>`` of the installed package."""
    directory = package_dir("chatterbot_corpus", KEY) / "data" / language
    if not directory.is_dir():
        raise config_error(
            KEY, BUNDLED, f"chatterbot-corpus has no {directory}", "reinstall chatterbot-corpus"
        )
    return directory


def read_chatterbot(source: str | Path) -> list[list[str]]:
    """The conversations (lists of non-empty turn strings) of a chatterbot ``*.yml`` file or of
    every such file in a directory, in sorted file order."""
    import yaml

    source = Path(source)
    paths = sorted(source.glob("*.yml")) if source.is_dir() else [source]
    if not paths:
        raise config_error(
            KEY,
            str(source),
            "the directory holds no *.yml conversation file",
            "point it to chatterbot-format .yml files or a .jsonl of turns",
        )
    conversations = []
    for path in paths:
        try:
            data = yaml.safe_load(path.read_text("utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ClozelabError(
                f"{KEY}: {path} is not valid YAML{where}. Fix: write chatterbot's format, "
                "'conversations:' followed by a list of turn lists."
            ) from None
        listed = data.get("conversations") if isinstance(data, dict) else None
        if not isinstance(listed, list):
            raise ClozelabError(
                f"{KEY}: {path} has no 'conversations:' list. Fix: write chatterbot's format, "
                "'conversations:' followed by a list of turn lists."
            )
        for turns in listed:
            if not isinstance(turns, list):
                continue  # chatterbot's files hold lists only; anything else is no dialogue
            turns = [str(t).strip() for t in turns if t is not None and str(t).strip()]
            if turns:
                conversations.append(turns)
    return conversations


def alternate_roles(turns: list[str]) -> Dialogue:
    """Q, R, Q, ... from the first turn on."""
    return [(text, Q if i % 2 == 0 else R) for i, text in enumerate(turns)]


def _line_error(path: Path, line: int, problem: str) -> ClozelabError:
    return ClozelabError(
        f"{KEY}={str(path)!r}: line {line}: {problem}. Fix: one dialogue per line, e.g. "
        f"{JSONL_EXAMPLE}."
    )


def _parse_turn(turn, path: Path, line: int, i: int) -> tuple[str, int | None]:
    if isinstance(turn, str):
        text, role = turn, None
    elif isinstance(turn, dict):
        text, name = turn.get("text"), turn.get("role")
        if not isinstance(name, str) or name.upper() not in ROLES:
            raise _line_error(path, line, f"turn {i} has role {name!r}, not 'Q' or 'R'")
        role = ROLES[name.upper()]
        if not isinstance(text, str):
            raise _line_error(path, line, f"turn {i} has no 'text' string")
    else:
        raise _line_error(path, line, f"turn {i} is {type(turn).__name__}, not a string/object")
    if not text.strip():
        raise _line_error(path, line, f"turn {i} is empty")
    return text.strip(), role


def read_dialogue_jsonl(path: str | Path) -> list[Dialogue]:
    """Dialogues of a JSONL file of turns (the format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise config_error(KEY, str(path), "no such file", "give an existing .jsonl of turns")
    dialogues = []
    with path.open(encoding="utf-8") as handle:
        for line, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise _line_error(path, line, f"not JSON ({exc.msg}, column {exc.colno})") from None
            turns = record.get("turns") if isinstance(record, dict) else None
            if not isinstance(turns, list) or not turns:
                raise _line_error(path, line, "no non-empty 'turns' list")
            parsed = [_parse_turn(t, path, line, i) for i, t in enumerate(turns)]
            explicit = {role is not None for _, role in parsed}
            if len(explicit) > 1:
                raise _line_error(path, line, "mixes plain-string turns and role objects")
            if explicit == {False}:
                dialogues.append(alternate_roles([text for text, _ in parsed]))
            else:
                dialogues.append([(text, int(role)) for text, role in parsed])
    if not dialogues:
        raise config_error(
            KEY, str(path), "the file holds no dialogue", f"write lines like {JSONL_EXAMPLE}"
        )
    return dialogues


def read_dialogues(spec: str) -> list[Dialogue]:
    """Dialogues of ``data.dialogue.corpus``: ``bundled:chatterbot``, a .jsonl file, or
    chatterbot-format .yml files (a file or a directory)."""
    spec = str(spec)
    if spec.startswith("bundled:"):
        if spec != BUNDLED:
            raise config_error(KEY, spec, "unknown bundled dialogue corpus", f"use {BUNDLED}")
        conversations = read_chatterbot(chatterbot_dir())
    else:
        path = Path(spec).expanduser()
        if path.suffix == ".jsonl":
            return read_dialogue_jsonl(path)
        if not path.exists():
            raise config_error(
                KEY,
                spec,
                "no such file or directory",
                f"use {BUNDLED}, a .jsonl of turns or a directory of chatterbot .yml files",
            )
        if path.is_file() and path.suffix not in (".yml", ".yaml"):
            raise config_error(
                KEY,
                spec,
                f"unknown dialogue format {path.suffix!r}",
                "give a .jsonl of turns or chatterbot-format .yml files",
            )
        conversations = read_chatterbot(path)
    if not conversations:
        raise config_error(KEY, spec, "no conversation with a non-empty turn", "fix the files")
    return [alternate_roles(turns) for turns in conversations]
