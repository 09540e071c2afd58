"""Users extend clozelab without forking: the corruption, objective and task of examples/ live in
the user's own modules, are selected from the command line (a config group file on
``hydra.searchpath``, or ``_target_`` overrides), trained end to end, and refused at compose time
exactly as built-in components are."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clozelab.core.errors import ClozelabError
from clozelab.pretrain import pretrain
from clozelab.training.validate import validate_pretrain

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
USER = (f"hydra.searchpath=[file://{EXAMPLES / 'conf'}]", "data.instances=full_sentences")
SHORT = ("trainer.max_steps=2", "trainer.val_check_interval=2", "initial_validation=false")


@pytest.fixture
def user_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the user's working directory


def test_user_corruption_and_objective_train_end_to_end(compose_pretrain, user_modules):
    cfg = compose_pretrain(*USER, "corruption=tail", "objective=[mlm,detect]", *SHORT)
    assert validate_pretrain(cfg) == ["mlm", "detect"]
    metrics = pretrain(cfg)
    assert metrics["status"] == "completed" and metrics["steps"] == 2
    for key in ("train/detect_loss", "val/detect_loss", "val/mlm_loss"):
        assert math.isfinite(metrics[key]) and metrics[key] > 0, key


def test_user_corruption_masks_the_tail(user_modules):
    import torch
    from my_corruption import TailMasking

    corruption = TailMasking(0.5, vocab_size=50, mask_token_id=4, special_token_ids=[0, 2, 3, 4])
    ids = torch.tensor([[2, 10, 11, 12, 13, 3, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(),
             "special_tokens_mask": torch.isin(ids, torch.tensor([0, 2, 3])).long()}  # fmt: skip
    out = corruption(batch, torch.Generator().manual_seed(0))
    assert out["input_ids"].tolist() == [[2, 10, 11, 4, 4, 3, 0, 0]]
    assert out["mlm_labels"].tolist() == [[-100, -100, -100, 12, 13, -100, -100, -100]]


def test_user_components_are_refused_like_builtin_ones(compose_pretrain, user_modules):
    cfg = compose_pretrain(*USER, "corruption=delete", "objective=[detect]")
    with pytest.raises(ClozelabError, match=r"detect.*mlm_labels.*masking corruption"):
        validate_pretrain(cfg)
    cfg = compose_pretrain(*USER, "corruption=tail", "objective=[mlm,sbo]")
    with pytest.raises(ClozelabError, match=r"span_bounds"):
        validate_pretrain(cfg)  # TailMasking declares no span_bounds


def test_a_target_that_is_no_extension_point_is_refused(compose_pretrain, user_modules):
    cfg = compose_pretrain(*USER, "corruption=tail", "corruption._target_=my_objective.nn.Linear")
    with pytest.raises(ClozelabError, match=r"corruption._target_=.*is not a Corruption.*subclass"):
        validate_pretrain(cfg)


CORPUS_TAIL = """
from my_corruption import TailMasking


class CorpusTail(TailMasking):
    runtime_inputs = frozenset({"corpus"})

    def __init__(self, rate=0.15, fill="mask", *, corpus, vocab_size, mask_token_id,
                 special_token_ids):
        super().__init__(rate, fill, vocab_size=vocab_size, mask_token_id=mask_token_id,
                         special_token_ids=special_token_ids)
        self.corpus_tokens = int(corpus.unigram_counts(vocab_size).sum())  # needs the corpus
"""


def test_a_user_corruption_that_reads_the_corpus_when_built_composes_and_trains(
    compose_pretrain, user_modules, tmp_path, monkeypatch
):
    """The compose-time check builds a scheme with stand-in tokenizer ids and no corpus: a user's
    constructor that reads the corpus fails there, which is no refusal of its config (it was
    refused with 'could not build ... check the keys'). A misspelt key still is."""
    (tmp_path / "corpus_tail.py").write_text(CORPUS_TAIL, "utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    target = ("corruption=tail", "corruption._target_=corpus_tail.CorpusTail")
    cfg = compose_pretrain(*USER, *target, "objective=[mlm,detect]", *SHORT)
    assert validate_pretrain(cfg) == ["mlm", "detect"]
    assert pretrain(cfg)["status"] == "completed"
    cfg = compose_pretrain(*USER, *target, "objective=[mlm,detect]", "+corruption.rat=0.3")
    with pytest.raises(ClozelabError, match=r"could not build corpus_tail.CorpusTail.*'rat'"):
        validate_pretrain(cfg)


def test_user_components_from_the_command_line(tmp_path, cache_dir, text_corpus):
    from helpers import TINY

    run = tmp_path / "run"
    overrides = [*TINY, f"data.corpus={text_corpus}", f"paths.cache_dir={cache_dir}",
                 f"hydra.run.dir={run}", "hydra.searchpath=[file://conf]",
                 "corruption=tail", "corruption.rate=0.3", "objective=[mlm,detect]",
                 "data.instances=full_sentences", *SHORT]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "clozelab", "pretrain", *overrides]
    done = subprocess.run(command, cwd=EXAMPLES, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and math.isfinite(metrics["train/detect_loss"])
    saved = (run / "config.yaml").read_text()
    assert "my_corruption.TailMasking" in saved and "rate: 0.3" in saved


def _finetune_cfg(tmp_path, *overrides):
    from helpers import WORDS, compose_config

    from clozelab.data.tokenizer import train_wordpiece

    tok = train_wordpiece([" ".join(WORDS)] * 3, 200, min_frequency=1).save(tmp_path / "tok")
    lines = [" ".join(WORDS[: 3 + (i * 7) % 25]) for i in range(60)]  # 3..27 words
    (tmp_path / "sentences.txt").write_text("\n".join(lines) + "\n", "utf-8")
    sizes = ("model=tiny", "model.hidden_size=32", "model.num_heads=2", "model.num_layers=2",
             "model.intermediate_size=64")  # fmt: skip
    return compose_config(
        f"hydra.searchpath=[file://{EXAMPLES / 'conf'}]",
        "task=sentlen", f"task.file={tmp_path / 'sentences.txt'}", "task.epochs=2",
        "checkpoint=none", f"random_init.tokenizer={tok}", "seeds=[1]", *sizes,
        f"paths.output_dir={tmp_path / 'out'}", "logger=csv", *overrides, name="finetune",
    )  # fmt: skip


def test_user_task_fine_tunes_end_to_end(tmp_path, user_modules):
    from clozelab.finetune import finetune

    result = finetune(_finetune_cfg(tmp_path))
    saved = json.loads((tmp_path / "out" / "eval" / "sentlen.json").read_text())
    assert saved["kind"] == "classification" and saved["metric"] == "accuracy"
    assert 0.0 <= result["value"] <= 1.0 and saved["protocol"]["eval_examples"] == 12


def test_a_task_target_that_is_no_task_is_refused(tmp_path, user_modules):
    from clozelab.finetune import finetune

    cfg = _finetune_cfg(tmp_path, "task._target_=my_corruption.TailMasking")
    with pytest.raises(ClozelabError, match=r"task._target_=.*is not a Task"):
        finetune(cfg)
