"""Readers of downstream data into examples: GLUE TSV directories (with or without a header, as
CoLA's raw release), SuperGLUE-style JSONL (RTE), generic csv/tsv/jsonl files named in config,
CoNLL-2003 (IOB1 or IOB2, read into IOB2), entity-span JSONL (nested NER), SQuAD v1.1 JSON and HF
``datasets`` names.

``read_task(task, data_dir)`` returns ``{"train": [...], "validation": [...]}`` for a task config
node (conf/task/*.yaml); relative paths are resolved against ``data_dir`` then ``task.path``.
"""

from __future__ import annotations

import csv
import functools
import json
import random
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from clozelab.core.errors import ClozelabError, config_error
from clozelab.tasks.bundled_data import read_bundled
from clozelab.tasks.examples import QAExample, SpanExample, TextExample, TokenExample, holdout_split
from clozelab.tasks.metrics import entity_spans

csv.field_size_limit(sys.maxsize)


# --- delimited and JSON lines -------------------------------------------------------------------


def _column(row: list[str] | dict, key, header: list[str] | None, path: Path, task_key: str):
    if key is None:
        return None
    if isinstance(row, dict):
        if key not in row:
            raise config_error(
                task_key, key, f"no such field in {path} (fields: {sorted(row)})", "name a field"
            )
        return row[key]
    if isinstance(key, int) or (isinstance(key, str) and key.lstrip("-").isdigit()):
        index = int(key)
    elif header is not None and key in header:
        index = header.index(key)
    else:
        raise config_error(
            task_key,
            key,
            f"no such column in {path} (header: {header})",
            "name a header column, or give a 0-based column index for files without a header",
        )
    if index >= len(row) or index < -len(row):
        raise config_error(task_key, key, f"column out of range in {path}: {row}", "fix the index")
    return row[index]


def _file_errors(reader):
    """A task file that is not in the expected format (binary, not UTF-8, a truncated JSON, fields
    of the wrong type) gives one ClozelabError naming the file, never a stray exception."""

    @functools.wraps(reader)
    def read(path, *args, **kwargs):
        try:
            return reader(path, *args, **kwargs)
        except ClozelabError:
            raise
        except (
            UnicodeDecodeError,
            csv.Error,
            ValueError,
            KeyError,
            TypeError,
            IndexError,
            AttributeError,
        ) as exc:
            raise ClozelabError(
                f"task file {path}: not readable as {reader.__name__.removeprefix('read_')} "
                f"({type(exc).__name__}: {exc}). Fix: check the file's format and encoding "
                "(UTF-8) against the task's format setting."
            ) from exc

    return read


def _check_delimiter(first: list[str] | None, delimiter: str, path: Path) -> None:
    """A CSV read as TSV (or the other way round) comes out as one column per line: name the
    format the file is in."""
    other, fmt, right = ("\t", "csv", "tsv") if delimiter == "," else (",", "tsv", "csv")
    if first and len(first) == 1 and other in first[0]:
        raise config_error(
            "task.format",
            fmt,
            f"{path} reads as one column per line ({first[0][:60]!r}); it looks "
            f"{'tab' if right == 'tsv' else 'comma'}-separated",
            f"set task.format={right}",
        )


@_file_errors
def read_delimited(
    path: Path,
    delimiter: str,
    text,
    text_pair=None,
    label=None,
    header: bool = True,
) -> list[TextExample]:
    """Rows of a TSV/CSV file. TSV is read as GLUE distributes it (no quoting); CSV with quotes.
    Columns are header names, or 0-based indices (files without a header, e.g. CoLA raw)."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    examples: list[TextExample] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter=delimiter, quoting=quoting)
        names = next(rows, None) if header else None
        for row in rows:
            if not examples and sum(c is not None for c in (text, text_pair, label)) > 1:
                _check_delimiter(names or row, delimiter, path)  # one column cannot hold them
            if not row or all(not c.strip() for c in row):
                continue
            examples.append(
                TextExample(
                    text=_column(row, text, names, path, "task.text"),
                    text_pair=_column(row, text_pair, names, path, "task.text_pair"),
                    label=_column(row, label, names, path, "task.label"),
                )
            )
    return examples


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise config_error(
                    "task.format", "jsonl", f"{path}:{lineno} is not JSON ({exc})", "fix the file"
                ) from exc


@_file_errors
def read_jsonl(path: Path, text, text_pair=None, label=None) -> list[TextExample]:
    """One JSON object per line (SuperGLUE RTE: premise, hypothesis, label)."""
    return [
        TextExample(
            text=_column(row, text, None, path, "task.text"),
            text_pair=_column(row, text_pair, None, path, "task.text_pair"),
            label=_column(row, label, None, path, "task.label") if label else None,
        )
        for _, row in _json_lines(path)
    ]


@_file_errors
def read_entities_jsonl(path: Path, tokens="tokens", entities="entities") -> list[SpanExample]:
    """Nested NER as JSON lines: ``{"tokens": [...], "entities": [{"start": 0, "end": 2,
    "type": "ORG"}, ...]}``, word offsets with ``end`` exclusive; entities may nest or overlap."""
    examples = []
    for lineno, row in _json_lines(path):
        words = [str(w) for w in _column(row, tokens, None, path, "task.tokens")]
        spans = []
        for entity in _column(row, entities, None, path, "task.entities"):
            start, end, kind = int(entity["start"]), int(entity["end"]), str(entity["type"])
            if not 0 <= start < end <= len(words):
                raise config_error(
                    "task.entities",
                    entities,
                    f"{path}:{lineno}: entity {entity} is not a span of the {len(words)} tokens",
                    "give word offsets with 0 <= start < end <= len(tokens), end exclusive",
                )
            spans.append((start, end, kind))
        examples.append(SpanExample(words, sorted(set(spans))))
    return examples


def as_span_examples(examples: Iterable[TokenExample | SpanExample]) -> list[SpanExample]:
    """Span examples; IOB2-tagged sentences become their entity spans (as conlleval reads them)."""
    return [
        e if isinstance(e, SpanExample) else SpanExample(e.words, sorted(entity_spans(e.tags)))
        for e in examples
    ]


# --- CoNLL-2003 ---------------------------------------------------------------------------------


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """IOB1 (B- only between two adjacent entities of one type) to IOB2 (B- opens every entity)."""
    out = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-"):
            prev = out[i - 1] if i else "O"
            if prev == "O" or prev[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        out.append(tag)
    return out


@_file_errors
def read_conll(path: Path, tag_column: int = -1, scheme: str = "iob1") -> list[TokenExample]:
    """Sentences of a CoNLL file (word first, the tag in ``tag_column``), blank-line separated,
    ``-DOCSTART-`` lines skipped; tags come back in IOB2."""
    if scheme not in ("iob1", "iob2"):
        raise config_error("task.scheme", scheme, "unknown tagging scheme", "use iob1 or iob2")
    sentences: list[TokenExample] = []
    words: list[str] = []
    tags: list[str] = []

    def flush():
        if words:
            fixed = iob1_to_iob2(tags) if scheme == "iob1" else list(tags)
            sentences.append(TokenExample(list(words), fixed))
            words.clear()
            tags.clear()

    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                flush()
                continue
            if parts[0] == "-DOCSTART-":
                flush()
                continue
            if len(parts) < 2:
                raise config_error(
                    "task.format", "conll", f"{path}:{lineno} has no tag column", "fix the file"
                )
            tag = parts[tag_column]
            if tag != "O" and tag[:2] not in ("B-", "I-"):
                raise config_error(
                    "task.tag_column",
                    tag_column,
                    f"{path}:{lineno}: {tag!r} is not an IOB tag",
                    "point task.tag_column at the NER column (CoNLL-2003: -1)",
                )
            words.append(parts[0])
            tags.append(tag)
    flush()
    return sentences


# --- SQuAD --------------------------------------------------------------------------------------


@_file_errors
def read_squad(path: Path) -> list[QAExample]:
    """Questions of a SQuAD v1.1 JSON file (``data[].paragraphs[].qas[]``)."""
    try:
        payload = json.loads(Path(path).read_text("utf-8"))
        articles = payload["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise config_error(
            "task.validation", str(path), f"not a SQuAD JSON file ({exc})", "give SQuAD v1.1 JSON"
        ) from exc
    examples = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                examples.append(
                    QAExample(
                        id=str(qa["id"]),
                        question=qa["question"],
                        context=context,
                        answers=[a["text"] for a in qa.get("answers", [])],
                        answer_starts=[int(a["answer_start"]) for a in qa.get("answers", [])],
                        title=article.get("title", ""),
                    )
                )
    return examples


# --- HF datasets --------------------------------------------------------------------------------


def read_hf(task: DictConfig, split: str) -> list[TextExample]:
    """Rows of an HF ``datasets`` split (``task.name``/``task.subset``) as text examples."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise config_error("task.format", "hf", "needs the datasets package", "install it") from exc
    try:
        data = datasets.load_dataset(task.dataset, task.get("subset"), split=split)
    except Exception as exc:
        raise config_error(
            "task.dataset",
            task.dataset,
            f"could not load split {split!r} with HF datasets ({type(exc).__name__}: {exc}); "
            "offline machines cannot download it",
            "download it once online (it is then cached), or give local files with "
            "task=custom task.format=csv|tsv|jsonl task.train=PATH task.validation=PATH",
        ) from exc
    return [
        TextExample(
            text=row[task.text],
            text_pair=row[task.text_pair] if task.get("text_pair") else None,
            label=row[task.label] if task.get("label") else None,
        )
        for row in data
    ]


# --- dispatch -----------------------------------------------------------------------------------


def resolve_path(task: DictConfig, name: str | None, data_dir: str | Path | None) -> Path | None:
    """``task.<split>`` as a path: absolute, or under ``data_dir``/``task.path``."""
    if name is None:
        return None
    path = Path(str(name)).expanduser()
    if not path.is_absolute():
        base = Path(str(task.get("path") or "")).expanduser()
        if not base.is_absolute() and data_dir is not None:
            base = Path(str(data_dir)).expanduser() / base
        path = base / path
    return path


def _check_file(path: Path, key: str) -> Path:
    if not path.is_file():
        raise config_error(
            key,
            str(path),
            "no such file",
            "set data_dir (or CLOZELAB_DATA_DIR) to the folder holding the task's data, or give "
            f"{key} as an absolute path",
        )
    return path


def _read_split(task: DictConfig, path: Path, entities: bool):
    fmt = task.format
    if fmt in ("glue", "tsv", "csv"):
        delimiter = "," if fmt == "csv" else "\t"
        return read_delimited(
            path,
            delimiter,
            task.text,
            task.get("text_pair"),
            task.get("label"),
            header=bool(task.get("header", True)),
        )
    if fmt == "jsonl" and entities:
        return read_entities_jsonl(
            path, task.get("tokens", "tokens"), task.get("entities", "entities")
        )
    if fmt == "jsonl":
        return read_jsonl(path, task.text, task.get("text_pair"), task.get("label"))
    if fmt == "conll":
        return read_conll(path, int(task.get("tag_column", -1)), task.get("scheme", "iob1"))
    if fmt == "squad":
        return read_squad(path)
    raise config_error(
        "task.format", fmt, "unknown format", "use glue|tsv|csv|jsonl|conll|squad|hf|bundled"
    )


def subsample(items: list, limit: int | None, seed: int = 0) -> list:
    """A fixed (seed 0 by default) random subset of ``limit`` items, in their original order."""
    if not limit or limit >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), int(limit)))
    return [items[i] for i in keep]


def read_task(
    task: DictConfig, data_dir: str | Path | None = None, entities: bool = False
) -> dict[str, list]:
    """``{"train": [...], "validation": [...]}`` for ``task`` (subsampled as it asks).
    ``entities``: ``jsonl`` files hold tokens and entity spans (span NER), not texts and labels.

    ``task.holdout=F`` (with ``task.train`` null) trains on a fraction F of the validation file
    and scores on the rest, for data sets whose train split is not at hand (SQuAD, QNLI here)."""
    fmt = task.get("format")
    if fmt == "bundled":
        splits = read_bundled(task)
    elif fmt == "hf":
        splits = {
            "train": read_hf(task, task.get("train") or "train"),
            "validation": read_hf(task, task.get("validation") or "validation"),
        }
    else:
        val_path = resolve_path(task, task.get("validation"), data_dir)
        if val_path is None:
            raise config_error("task.validation", None, "no validation file", "set it")
        validation = _read_split(task, _check_file(val_path, "task.validation"), entities)
        train_path = resolve_path(task, task.get("train"), data_dir)
        if train_path is not None:
            train = _read_split(task, _check_file(train_path, "task.train"), entities)
        elif task.get("holdout"):
            train, validation = holdout_split(validation, float(task.holdout))
        else:
            train = []
        splits = {"train": train, "validation": validation}
    splits["train"] = subsample(splits["train"], task.get("max_train_examples"))
    splits["validation"] = subsample(splits["validation"], task.get("max_eval_examples"))
    return splits


def label_names(task: DictConfig, examples: Iterable[TextExample]) -> list[str]:
    """Class names: ``task.labels`` when given, else the sorted distinct labels of ``examples``."""
    if task.get("labels"):
        return [str(x) for x in OmegaConf.to_container(task.labels)]
    names = sorted({str(e.label) for e in examples if e.label is not None})
    if len(names) < 2:
        raise config_error(
            "task.label", task.get("label"), f"found {len(names)} distinct label(s)", "check it"
        )
    return names


def iter_tags(examples: Iterable[TokenExample]) -> Iterator[str]:
    for e in examples:
        yield from e.tags
