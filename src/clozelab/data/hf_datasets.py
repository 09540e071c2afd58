"""Reader for HF ``datasets``: local files, ``save_to_disk`` directories and Hub names.

Each row is one document; its text column is normalised to the ``Document`` contract (lines
stripped, empty lines dropped, paragraphs joined by ``"\\n"``). Local data files are streamed
(``streaming=True``), so nothing is copied into the HF cache and memory stays flat. A Hub name is
streamed when the Hub can be reached; when it cannot (no network, or ``HF_HUB_OFFLINE`` /
``HF_DATASETS_OFFLINE`` set), only a copy already in the local cache is used, and a name that is
not cached fails at once with a ``ClozelabError`` instead of retrying for half a minute.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from clozelab.core.errors import ClozelabError, config_error
from clozelab.data.document import Document

__all__ = ["LOCAL_BUILDERS", "is_saved_dataset", "iter_hf_dataset"]

# File extension -> packaged ``datasets`` builder.
LOCAL_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
}
_PROBE_TIMEOUT_S = 3.0
_BATCH = 1000


def is_saved_dataset(path: Path) -> bool:
    """True for a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def iter_hf_dataset(
    name_or_path: str | PathLike[str],
    *,
    split: str = "train",
    text_column: str = "text",
    config_name: str | None = None,
    key: str = "data.corpus",
) -> Iterator[Document]:
    """Yield one ``Document`` per row of a ``datasets`` dataset.

    ``name_or_path`` is a local ``.json``/``.jsonl``/``.csv``/``.parquet``/``.txt`` file (a
    ``.txt`` file is read with the ``text`` builder, one document per blank-line-separated
    paragraph), a directory of such files, a ``save_to_disk`` directory, or a Hub dataset name.
    Rows whose text is empty are skipped. ``id`` is ``"<name>:<split>:<row>"``.
    """
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - the hf extra is not installed
        raise config_error(
            key, str(name_or_path), "needs the `datasets` library", "pip install clozelab[hf]"
        ) from exc
    source = str(name_or_path)
    path = Path(source)
    if path.exists():
        dataset = _load_local(datasets, path, split, config_name, key)
    else:
        looks_like_path = (
            source.startswith((".", "/", "~")) or path.suffix.lower() in LOCAL_BUILDERS
        )
        if isinstance(name_or_path, PathLike) or looks_like_path:
            raise config_error(key, source, "no such file or directory", "check the path")
        dataset = _load_hub(datasets, source, split, config_name, key)
    yield from _rows(dataset, source, split, text_column, key)


def _load_local(datasets: Any, path: Path, split: str, config_name: str | None, key: str) -> Any:
    try:
        if is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise config_error(
                        key,
                        str(path),
                        f"has no split {split!r} (splits: {', '.join(loaded)})",
                        "pass one of those splits",
                    )
                loaded = loaded[split]
            return loaded
        if path.is_dir():
            files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in LOCAL_BUILDERS)
            suffixes = {Path(f).suffix.lower() for f in files}
            builders = {LOCAL_BUILDERS[s] for s in suffixes}
            if len(builders) != 1:
                raise config_error(
                    key,
                    str(path),
                    "directory holds "
                    + ("no data files" if not files else f"mixed formats {sorted(suffixes)}"),
                    "put .json/.jsonl/.csv/.parquet/.txt files of one format in it, "
                    "or a save_to_disk dataset",
                )
            builder = builders.pop()
        else:
            builder = LOCAL_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise config_error(
                    key,
                    str(path),
                    f"unsupported file type {path.suffix or '(none)'!r}",
                    "use a .json, .jsonl, .csv, .parquet or .txt file",
                )
            files = [str(path)]
        kwargs: dict[str, Any] = {"sample_by": "paragraph"} if builder == "text" else {}
        # Local files are passed as the "train" split of data_files.
        return datasets.load_dataset(
            builder, data_files={"train": files}, split="train", streaming=True, **kwargs
        )
    except ClozelabError:
        raise
    except Exception as exc:  # datasets/pyarrow raise many types for unreadable files
        raise config_error(
            key,
            str(path),
            f"cannot be read by `datasets` ({type(exc).__name__}: {exc})",
            "check that the file is valid JSON lines / CSV / Parquet",
        ) from exc


def _hub_reachable() -> bool:
    """Whether the Hub endpoint accepts a TCP connection within a few seconds."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # the proxy decides; let `datasets` try
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parts = urlsplit(endpoint)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    """Switch ``datasets`` and ``huggingface_hub`` to offline mode (cache only) for a while."""
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = True
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _load_hub(datasets: Any, name: str, split: str, config_name: str | None, key: str) -> Any:
    offline = bool(datasets.config.HF_HUB_OFFLINE) or not _hub_reachable()
    try:
        if offline:
            with _offline(datasets):
                return datasets.load_dataset(name, config_name, split=split)
        return datasets.load_dataset(name, config_name, split=split, streaming=True)
    except Exception as exc:
        shown = f"hf:{name}" + (f" (config {config_name!r})" if config_name else "")
        if offline:
            raise config_error(
                key,
                shown,
                "the Hugging Face Hub cannot be reached (offline) and the dataset is not in the "
                f"local cache ({type(exc).__name__})",
                "pass a local path instead (a .jsonl/.csv/.parquet/.txt file or a save_to_disk "
                "directory), or download it once while online",
            ) from exc
        raise config_error(
            key,
            shown,
            f"could not be loaded from the Hub ({type(exc).__name__}: {exc})",
            "check the dataset name, config and split, or pass a local path",
        ) from exc


def _rows(dataset: Any, source: str, split: str, text_column: str, key: str) -> Iterator[Document]:
    columns = list(dataset.column_names or [])
    if columns and text_column not in columns:
        raise config_error(
            key,
            source,
            f"has no column {text_column!r} (columns: {', '.join(columns)})",
            "name the column that holds the text: data.text_column=COLUMN (one of those)",
        )
    features = getattr(dataset, "features", None)
    if features is not None and text_column in features:
        dtype = getattr(features[text_column], "dtype", None)
        if dtype not in (None, "string", "large_string"):
            raise config_error(
                key,
                source,
                f"column {text_column!r} holds {dtype}, not text",
                "set the text column to a string column",
            )
    row = 0
    try:
        for batch in dataset.select_columns([text_column]).iter(batch_size=_BATCH):
            for value in batch[text_column]:
                text = _normalise(value, source, text_column, row, key)
                if text:
                    yield Document(id=f"{source}:{split}:{row}", text=text)
                row += 1
    except ClozelabError:
        raise
    except (KeyError, ValueError) as exc:
        if not columns:  # streamed JSON without a schema: the column check happens here
            raise config_error(
                key,
                source,
                f"has no column {text_column!r} ({type(exc).__name__}: {exc})",
                "set the text column to one present in every row (text_column=...)",
            ) from exc
        raise config_error(
            key, source, f"cannot be read at row {row} ({exc})", "check the file"
        ) from exc
    except Exception as exc:  # pyarrow/json/network errors while streaming
        raise config_error(
            key,
            source,
            f"failed while reading row {row} ({type(exc).__name__}: {exc})",
            "check that the data is valid and complete, or pass a local copy",
        ) from exc


def _normalise(value: object, source: str, column: str, row: int, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise config_error(
            key,
            source,
            f"row {row} of column {column!r} is {type(value).__name__}, not text",
            "set the text column to a string column",
        )
    if "\n" not in value and "\r" not in value:
        return value.strip()
    return "\n".join(line for line in (ln.strip() for ln in value.splitlines()) if line)
