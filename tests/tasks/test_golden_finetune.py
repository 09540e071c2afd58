"""Golden fine-tuning: each downstream task kind, fine-tuned from a tiny random backbone on a tiny
file, gives the same final training loss and scores as when these numbers were recorded (before
the task kinds became classes, issue 14). A deliberate change of behaviour re-records them (run
with CLOZELAB_GOLDEN_RECORD=1 and paste the printed lines)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import WORDS
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent))  # this folder's conftest: the tiny backbone
from conftest import TINY_ARCH

from clozelab.training.evaluation import load_task, run_task

SMALL = {"epochs": 3, "batch_size": 4, "max_seq_length": 32, "lr": 1e-3}
CONLL = "Paris NNP I-NP I-LOC\nLondon NNP I-NP I-LOC\nis VBZ I-VP O\ngood JJ I-NP O\n\n"
SQUAD = {
    "data": [{"title": "a", "paragraphs": [{
        "context": "the river crossed the city . the king built a large library .",
        "qas": [{"id": f"q{i}", "question": "who built the library ?",
                 "answers": [{"text": "the king", "answer_start": 30}]} for i in range(6)],
    }]}]
}  # fmt: skip


def _classification(d):
    rows = ["sentence\tlabel"] + [f"good movie {i}\t1" for i in range(6)]
    rows += [f"bad river {i}\t0" for i in range(6)]
    (d / "train.tsv").write_text("\n".join(rows) + "\n", "utf-8")
    (d / "dev.tsv").write_text("\n".join(rows[:1] + rows[4:10]) + "\n", "utf-8")
    return load_task("sst2"), {"path": str(d)}, {}


def _regression(d):
    rows = ["s1,s2,score"] + [f"{WORDS[i]} movie,bad {WORDS[-i]},{i % 5}" for i in range(10)]
    (d / "t.csv").write_text("\n".join(rows) + "\n", "utf-8")
    node = {"_target_": "clozelab.tasks.classification.RegressionTask",
            "train": str(d / "t.csv"), "validation": str(d / "t.csv"),
            "text": "s1", "text_pair": "s2", "label": "score"}  # fmt: skip
    return load_task("custom"), node, {}


def _token(decoder):
    def make(d):
        (d / "train.txt").write_text("-DOCSTART- -X- -X- O\n\n" + CONLL * 6, "utf-8")
        (d / "dev.txt").write_text(CONLL * 2, "utf-8")
        return load_task("conll2003"), {"path": str(d), "decoder": decoder}, {}

    return make


def _qa(d):
    (d / "s.json").write_text(json.dumps(SQUAD), "utf-8")
    node = {"path": str(d), "train": "s.json", "validation": "s.json", "doc_stride": 4,
            "max_seq_length": 16}  # fmt: skip
    return load_task("squad"), node, {}


def _spans(d):
    (d / "train.txt").write_text("-DOCSTART- -X- -X- O\n\n" + CONLL * 6, "utf-8")
    (d / "dev.txt").write_text(CONLL * 2, "utf-8")
    return load_task("conll2003_spans"), {"path": str(d)}, {}


def _zero_shot(name):
    def make(d):
        return load_task(name), {"max_examples": 40} if name == "chatterbot" else {}, {}

    return make


KINDS = {
    "classification": _classification,
    "regression": _regression,
    "token_softmax": _token("softmax"),
    "token_crf": _token("crf"),
    "qa": _qa,
    "span_ner": _spans,
    "word_similarity": _zero_shot("wordsim353"),
    "response_selection": _zero_shot("chatterbot"),
}

# kind -> every metric's per-seed values and each seed's final training loss (seeds 1, 2);
# recorded on main 9151106
GOLDEN = {
    "classification": {"accuracy": [0.5, 0.5], "final_train_loss": [0.69451, 0.692364]},
    "qa": {
        "exact_match": [100.0, 100.0],
        "f1": [100.0, 100.0],
        "final_train_loss": [1.761407, 1.794369],
    },
    "regression": {
        "final_train_loss": [5.836456, 6.009254],
        "pearson": [-0.44698, 0.141791],  # one thread, fused AdamW (re-recorded 2026-12-08)
        "spearman": [-0.393893, 0.049237],
    },
    "response_selection": {
        "accuracy": [0.05, 0.075],
        "final_train_loss": [0.0, 0.0],
        "mrr": [0.252788, 0.278006],
        "pairs": [40.0, 40.0],
    },
    "span_ner": {
        "entity_f1": [0.0, 0.0],
        "entity_precision": [0.0, 0.0],
        "entity_recall": [0.0, 0.0],
        "final_train_loss": [0.67593, 0.681003],  # main 57c621b: FFN span endpoints
    },
    "token_crf": {
        "entity_f1": [1.0, 1.0],
        "entity_precision": [1.0, 1.0],
        "entity_recall": [1.0, 1.0],
        "final_train_loss": [4.052242, 3.811329],
    },
    "token_softmax": {
        "entity_f1": [1.0, 1.0],
        "entity_precision": [1.0, 1.0],
        "entity_recall": [1.0, 1.0],
        "final_train_loss": [1.016167, 0.955842],
    },
    "word_similarity": {
        "final_train_loss": [0.0, 0.0],
        "pairs": [353.0, 353.0],
        "spearman": [0.006741, 0.006741],
    },
}


@pytest.fixture
def one_thread():
    """Float sums are ordered differently with 1 and 2 intra-op threads, and the regression kind's
    Pearson over 10 pairs amplifies that: the golden numbers are recorded and checked at one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_task_kind_scores_are_unchanged(tmp_path, tiny_tokenizer_dir, one_thread, kind):
    base, node, options = KINDS[kind](tmp_path)
    task = OmegaConf.merge(base, {**SMALL, **node})
    result = run_task(task, "none", seeds=[1, 2], eval_dir=tmp_path / "eval",
                      arch=OmegaConf.create(TINY_ARCH),
                      random_init={"tokenizer": str(tiny_tokenizer_dir)}, **options)  # fmt: skip
    got = {name: [round(v, 6) for v in m["values"]] for name, m in result["metrics"].items()}
    got["final_train_loss"] = [round(r.get("final_train_loss", 0.0), 6) for r in result["runs"]]
    if os.environ.get("CLOZELAB_GOLDEN_RECORD"):
        print(f"GOLDEN {kind!r}: {json.dumps(got, sort_keys=True)},")
        return
    want = GOLDEN[kind]
    assert sorted(got) == sorted(want), (kind, got)
    for key, values in want.items():
        for a, b in zip(got[key], values, strict=True):
            assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5), (kind, key, got[key], values)
