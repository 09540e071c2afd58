"""HF ``datasets`` reader: local files, save_to_disk, offline Hub names."""

from __future__ import annotations

import json
import time

import pytest

from clozelab.core.errors import ClozelabError
from clozelab.data import hf_datasets
from clozelab.data.hf_datasets import iter_hf_dataset

datasets = pytest.importorskip("datasets")

ROWS = [
    {"text": "First document.\n\n  Second paragraph.  ", "label": 1},
    {"text": "   ", "label": 0},
    {"text": None, "label": 0},
    {"text": "Third row.", "label": 2},
]


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), "utf-8")
    return path


def test_local_jsonl(jsonl):
    docs = list(iter_hf_dataset(jsonl))
    assert [d.text for d in docs] == ["First document.\nSecond paragraph.", "Third row."]
    assert docs[0].id == f"{jsonl}:train:0" and docs[1].id == f"{jsonl}:train:3"
    assert all(d.entities == [] and d.sentences is None for d in docs)


def test_local_csv_other_column(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('body,n\n"A csv row.",1\n"Another one.",2\n', "utf-8")
    assert [d.text for d in iter_hf_dataset(path, text_column="body")] == [
        "A csv row.",
        "Another one.",
    ]


def test_missing_text_column_lists_columns(jsonl):
    with pytest.raises(ClozelabError, match=r"no column 'body'.*text.*label.*Fix:"):
        list(iter_hf_dataset(jsonl, text_column="body"))


def test_non_text_column(jsonl):
    with pytest.raises(ClozelabError, match=r"'label'.*not text"):
        list(iter_hf_dataset(jsonl, text_column="label"))


def test_save_to_disk_dataset_and_dict(tmp_path):
    ds = datasets.Dataset.from_dict({"text": ["Saved one.", "Saved two."], "x": [1, 2]})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert [d.text for d in iter_hf_dataset(tmp_path / "ds")] == ["Saved one.", "Saved two."]
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "dd"))
    got = [d.text for d in iter_hf_dataset(tmp_path / "dd", split="validation")]
    assert got == ["Saved one.", "Saved two."]
    with pytest.raises(ClozelabError, match=r"no split 'train'.*validation"):
        list(iter_hf_dataset(tmp_path / "dd"))


def test_directory_of_jsonl(tmp_path, jsonl):
    other = tmp_path / "more.jsonl"
    other.write_text(json.dumps({"text": "More.", "label": 5}) + "\n", "utf-8")
    texts = [d.text for d in iter_hf_dataset(tmp_path)]
    assert sorted(texts) == sorted(["First document.\nSecond paragraph.", "Third row.", "More."])


def test_broken_json(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": tru\n', "utf-8")
    with pytest.raises(ClozelabError, match=r"bad\.jsonl"):
        list(iter_hf_dataset(path))


def test_missing_local_path(tmp_path):
    with pytest.raises(ClozelabError, match="no such file or directory"):
        list(iter_hf_dataset(tmp_path / "absent.jsonl"))


@pytest.mark.timeout(60)
def test_hub_name_offline_fails_fast():
    start = time.perf_counter()
    with pytest.raises(ClozelabError, match=r"offline.*Fix: pass a local path"):
        list(iter_hf_dataset("clozelab-test/no-such-dataset"))
    assert time.perf_counter() - start < 20


@pytest.mark.timeout(60)
def test_hub_unreachable_without_offline_flag(monkeypatch):
    # HF_HUB_OFFLINE unset but no network: the probe fails and the cache-only path is taken.
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_datasets, "_hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(ClozelabError, match="cannot be reached"):
        list(iter_hf_dataset("clozelab-test/no-such-dataset", config_name="x"))
    assert time.perf_counter() - start < 20
    # the flags are restored afterwards
    assert datasets.config.HF_HUB_OFFLINE is False and hub_constants.HF_HUB_OFFLINE is False
