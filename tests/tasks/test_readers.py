"""Readers on small files in the real formats, and on ../shared/data when present."""

from __future__ import annotations

import json

import pytest
from helpers import SHARED_DATA
from omegaconf import OmegaConf

from clozelab.core.errors import ClozelabError
from clozelab.tasks.readers import (
    iob1_to_iob2,
    read_conll,
    read_delimited,
    read_jsonl,
    read_squad,
    read_task,
)
from clozelab.training.evaluation import load_task


def test_glue_tsv_with_header_and_unquoted_quotes(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text(
        '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n'
        '1\t1\t2\tHe said "no.\tHe said no.\n0\t3\t4\tA b\tC d\n', "utf-8"
    )  # fmt: skip
    rows = read_delimited(path, "\t", "#1 String", "#2 String", "Quality")
    assert [(r.text, r.text_pair, r.label) for r in rows] == [
        ('He said "no.', "He said no.", "1"),
        ("A b", "C d", "0"),
    ]


def test_cola_raw_without_header_by_column_index(tmp_path):
    path = tmp_path / "in_domain_dev.tsv"
    path.write_text("gj04\t1\t\tThe sailors rode.\ngj04\t0\t*\tRode the sailors the.\n", "utf-8")
    rows = read_delimited(path, "\t", 3, None, 1, header=False)
    assert [(r.text, r.label) for r in rows] == [
        ("The sailors rode.", "1"),
        ("Rode the sailors the.", "0"),
    ]


def test_unknown_column_is_a_clear_error(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("sentence\tlabel\nx\t1\n", "utf-8")
    with pytest.raises(ClozelabError, match="task.text"):
        read_delimited(path, "\t", "text", None, "label")


def test_rte_superglue_jsonl(tmp_path):
    path = tmp_path / "val.jsonl"
    rows = [{"premise": "A.", "hypothesis": "B.", "label": "entailment", "idx": 0}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", "utf-8")
    (ex,) = read_jsonl(path, "premise", "hypothesis", "label")
    assert (ex.text, ex.text_pair, ex.label) == ("A.", "B.", "entailment")


def test_iob1_to_iob2():
    assert iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [
        "B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"
    ]  # fmt: skip


def test_conll_iob1_and_iob2(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP I-NP I-ORG\nrejects VBZ I-VP O\nGerman JJ I-NP I-MISC\n\n"
        "Peter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\n"
    )
    path = tmp_path / "dev.txt"
    path.write_text(text, "utf-8")
    sents = read_conll(path, scheme="iob1")
    assert [s.words for s in sents] == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert [s.tags for s in sents] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]
    assert read_conll(path, scheme="iob2")[1].tags == ["I-PER", "I-PER"]


def test_squad_json(tmp_path):
    payload = {"data": [{"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where is Paris?",
         "answers": [{"text": "France", "answer_start": 12}]}]}]}]}  # fmt: skip
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(payload), "utf-8")
    (ex,) = read_squad(path)
    assert ex.context[ex.answer_starts[0] :].startswith(ex.answers[0])


def test_custom_task_csv_and_regression(tmp_path):
    (tmp_path / "train.csv").write_text('review,stars\n"good, fine",4.5\nbad,1\n', "utf-8")
    (tmp_path / "dev.csv").write_text("review,stars\nok,3\n", "utf-8")
    task = OmegaConf.merge(
        load_task("custom"),
        {"train": str(tmp_path / "train.csv"), "validation": "dev.csv", "path": str(tmp_path),
         "text": "review", "label": "stars",
         "_target_": "clozelab.tasks.classification.RegressionTask"},
    )  # fmt: skip
    splits = read_task(task)
    assert [e.text for e in splits["train"]] == ["good, fine", "bad"]
    assert splits["validation"][0].label == "3"


def test_missing_file_names_the_key(tmp_path):
    task = OmegaConf.merge(load_task("sst2"), {"path": str(tmp_path)})
    with pytest.raises(ClozelabError, match="task.validation"):
        read_task(task)


def test_hf_dataset_offline_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = OmegaConf.merge(
        load_task("custom"), {"format": "hf", "dataset": "clozelab-no-such/dataset-xyz"}
    )
    with pytest.raises(ClozelabError, match="offline"):
        read_task(task)


needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")


@needs_data
@pytest.mark.parametrize(
    ("name", "n_validation", "labels"),
    [("sst2", 872, {"0", "1"}), ("mrpc", 408, {"0", "1"}), ("cola", 527, {"0", "1"}),
     ("rte", 277, {"entailment", "not_entailment"})],
)  # fmt: skip
def test_real_glue_files(name, n_validation, labels):
    task = OmegaConf.merge(load_task(name), {"train": None})
    splits = read_task(task, SHARED_DATA)
    assert len(splits["validation"]) == n_validation
    assert {str(e.label) for e in splits["validation"]} == labels


@needs_data
def test_real_stsb_conll_squad():
    stsb = read_task(OmegaConf.merge(load_task("stsb"), {"train": None}), SHARED_DATA)
    assert len(stsb["validation"]) == 1500
    assert all(0.0 <= float(e.label) <= 5.0 for e in stsb["validation"])
    conll = read_task(OmegaConf.merge(load_task("conll2003"), {"train": None}), SHARED_DATA)
    assert len(conll["validation"]) == 3250
    squad = read_task(
        OmegaConf.merge(load_task("squad"), {"train": None, "holdout": 0.5}), SHARED_DATA
    )
    assert len(squad["train"]) + len(squad["validation"]) == 10570
    titles = {e.title for e in squad["train"]} & {e.title for e in squad["validation"]}
    assert not titles, "a held-out split keeps whole articles apart"


def test_unknown_class_and_non_numeric_regression_label_are_clear_errors():
    from clozelab.core.errors import ClozelabError
    from clozelab.data.tokenizer import train_wordpiece
    from clozelab.tasks.features import encode_text
    from clozelab.tasks.readers import TextExample

    tok = train_wordpiece(["a fine film", "a dull film"] * 10, vocab_size=120)
    with pytest.raises(ClozelabError, match="task.label='maybe'"):
        encode_text(tok, [TextExample("a film", None, "maybe")], 16, ["neg", "pos"])
    with pytest.raises(ClozelabError, match="regression"):
        encode_text(tok, [TextExample("a film", None, "high")], 16, None)
