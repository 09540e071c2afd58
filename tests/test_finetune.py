"""End-to-end fine-tuning of tiny random models on tiny files, one per task kind; the eval JSON;
the finetune/evaluate configs and commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent / "tasks"))
from conftest import TINY_ARCH

from clozelab.core.errors import ClozelabError
from clozelab.training.evaluation import load_task, run_task


@pytest.fixture
def tiny_tok(tmp_path_factory):
    from helpers import WORDS

    from clozelab.data.tokenizer import train_wordpiece

    text = [" ".join(WORDS)] * 3 + ["Paris London good bad movie ? ."] * 3
    return str(train_wordpiece(text, 200, min_frequency=1).save(tmp_path_factory.mktemp("t")))


def _run(task, tmp_path, tok, seeds=(1, 2), **kw):
    arch = OmegaConf.create(TINY_ARCH)
    return run_task(
        task,
        "none",
        seeds=list(seeds),
        eval_dir=tmp_path / "eval",
        arch=arch,
        random_init={"tokenizer": tok},
        **kw,
    )


SMALL = {"epochs": 2, "batch_size": 4, "max_seq_length": 32, "lr": 1e-3}


def test_classification_end_to_end_writes_the_eval_json(tmp_path, tiny_tok):
    rows = ["sentence\tlabel"] + [f"good movie {i}\t1" for i in range(8)]
    rows += [f"bad river {i}\t0" for i in range(8)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n", "utf-8")
    (tmp_path / "dev.tsv").write_text("\n".join(rows[:1] + rows[5:13]) + "\n", "utf-8")
    task = OmegaConf.merge(load_task("sst2"), {"path": str(tmp_path), **SMALL, "epochs": 15})
    result = _run(task, tmp_path, tiny_tok)
    saved = json.loads((tmp_path / "eval" / "sst2.json").read_text())
    for key in ("task", "metric", "value", "std", "seeds", "protocol", "metrics"):
        assert key in saved
    assert saved["seeds"] == [1, 2] and saved["metric"] == "accuracy"
    assert saved["protocol"]["epochs"] == 15 and saved["protocol"]["train_examples"] == 16
    assert result["value"] > 0.8, "a separable toy task is learnt"
    assert saved["protocol"]["pooling"] == "cls"  # BERT's default when fine-tuning
    mean_task = OmegaConf.merge(task, {"pooling": "mean"})
    mean = _run(mean_task, tmp_path, tiny_tok, seeds=[1])
    assert mean["protocol"]["pooling"] == "mean" and mean["value"] > 0.8


def test_regression_and_feature_mode(tmp_path, tiny_tok):
    rows = ["s1,s2,score"] + [f"good movie,bad river,{i % 5}" for i in range(10)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n", "utf-8")
    task = OmegaConf.merge(
        load_task("custom"),
        {
            "_target_": "clozelab.tasks.classification.RegressionTask",
            "train": str(tmp_path / "t.csv"),
            "validation": str(tmp_path / "t.csv"),
            "text": "s1",
            "text_pair": "s2",
            "label": "score",
            **SMALL,
        },
    )
    result = _run(task, tmp_path, tiny_tok, seeds=[1], mode="features", mix_layers=2)
    assert result["metric"] == "pearson" and result["protocol"]["mode"] == "features"
    assert result["protocol"]["pooling"] == "mean"  # frozen features: mean pooling by default


@pytest.mark.parametrize(
    "decoder, subwords",
    [("softmax", ("first", "first")), ("crf", ("first", "mean")), ("softmax", ("all", "mean"))],
)
def test_token_labelling_end_to_end(tmp_path, tiny_tok, decoder, subwords):
    sent = "Paris NNP I-NP I-LOC\nis VBZ I-VP O\ngood JJ I-NP O\n\n"
    (tmp_path / "train.txt").write_text("-DOCSTART- -X- -X- O\n\n" + sent * 12, "utf-8")
    (tmp_path / "dev.txt").write_text(sent * 3, "utf-8")
    task = OmegaConf.merge(
        load_task("conll2003"),
        {"path": str(tmp_path), "decoder": decoder, **SMALL, "epochs": 10,
         "subword_labels": subwords[0], "subword_decoding": subwords[1]},
    )  # fmt: skip
    result = _run(task, tmp_path, tiny_tok, seeds=[1])
    assert result["metric"] == "entity_f1" and result["value"] == pytest.approx(1.0)
    protocol = result["protocol"]
    assert (protocol["subword_labels"], protocol["subword_decoding"]) == subwords


def test_qa_end_to_end(tmp_path, tiny_tok):
    paragraphs = [
        {
            "context": "the river crossed the city . the king built a large library .",
            "qas": [
                {
                    "id": f"q{i}",
                    "question": "who built the library ?",
                    "answers": [{"text": "the king", "answer_start": 30}],
                }
                for i in range(6)
            ],
        }
    ]
    payload = {"data": [{"title": "a", "paragraphs": paragraphs}]}
    (tmp_path / "s.json").write_text(json.dumps(payload), "utf-8")
    task = OmegaConf.merge(
        load_task("squad"),
        {
            "path": str(tmp_path),
            "train": "s.json",
            "validation": "s.json",
            **SMALL,
            "epochs": 10,
            "doc_stride": 4,
            "max_seq_length": 16,
        },
    )
    result = _run(task, tmp_path, tiny_tok, seeds=[1])
    assert set(result["metrics"]) == {"exact_match", "f1"}
    assert result["metrics"]["f1"]["mean"] > 50


def test_bundled_zero_shot_tasks(tmp_path, tiny_tok):
    for name in ("wordsim353", "chatterbot"):
        task = OmegaConf.merge(
            load_task(name), {"max_examples": 40} if name == "chatterbot" else {}
        )
        result = _run(task, tmp_path, tiny_tok, seeds=[1, 2])
        assert -1.0 <= result["value"] <= 1.0
        assert (tmp_path / "eval" / f"{name}.json").is_file()
        assert result["protocol"]["layers"] == -1


def test_span_ner_end_to_end_on_conll(tmp_path, tiny_tok):
    sent = "Paris NNP I-NP I-LOC\nLondon NNP I-NP I-LOC\nis VBZ I-VP O\ngood JJ I-NP O\n\n"
    sent += "bad JJ I-NP O\nmovie NN I-NP I-MISC\n\n"
    (tmp_path / "train.txt").write_text("-DOCSTART- -X- -X- O\n\n" + sent * 8, "utf-8")
    (tmp_path / "dev.txt").write_text(sent * 2, "utf-8")
    task = OmegaConf.merge(
        load_task("conll2003_spans"),
        {"path": str(tmp_path), **SMALL, "epochs": 30, "span_endpoints": "linear"},
    )  # the default FFN endpoints learn this toy set too, in about twice the epochs
    result = _run(task, tmp_path, tiny_tok, seeds=[1])
    saved = json.loads((tmp_path / "eval" / "conll2003_spans.json").read_text())
    assert saved["kind"] == "span_ner" and saved["metric"] == "entity_f1"
    assert saved["protocol"]["max_span_length"] == 8 and saved["protocol"]["decoding"] == "flat"
    assert saved["protocol"]["span_endpoints"] == "linear"
    assert saved["protocol"]["span_pooling"] == "attention"
    assert set(saved["metrics"]) == {"entity_f1", "entity_precision", "entity_recall"}
    assert result["value"] == pytest.approx(1.0)


def test_nested_span_ner_end_to_end_from_jsonl(tmp_path, tiny_tok):
    def entity(start, end, kind):
        return {"start": start, "end": end, "type": kind}

    rows = [
        {"tokens": ["the", "king", "of", "Paris", "is", "good"],
         "entities": [entity(1, 4, "PER"), entity(3, 4, "LOC")]},
        {"tokens": ["London", "music", "history"],
         "entities": [entity(0, 3, "ORG"), entity(0, 1, "LOC")]},
    ]  # fmt: skip
    lines = [json.dumps(r) for r in rows]
    (tmp_path / "train.jsonl").write_text("\n".join(lines * 8) + "\n", "utf-8")
    (tmp_path / "dev.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    task = OmegaConf.merge(
        load_task("nested_ner"),
        {"path": str(tmp_path), "train": "train.jsonl", "validation": "dev.jsonl", **SMALL,
         "epochs": 30, "lr": 3e-3},
    )  # fmt: skip
    result = _run(task, tmp_path, tiny_tok, seeds=[1], mode="finetune")
    assert result["protocol"]["decoding"] == "nested"
    assert result["value"] == pytest.approx(1.0), "all four nested entities are found"


def _compose(name, *overrides):
    from hydra import compose, initialize_config_dir

    from clozelab.core.config import conf_dir

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose(name, overrides=["paths.output_dir=/tmp/x", *overrides])


@pytest.mark.parametrize("suite", ["glue", "bundled", "ner", "qa"])
def test_every_suite_names_existing_tasks(suite):
    cfg = _compose("evaluate", f"suite={suite}")
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.eval.suite == suite
    for name in cfg.eval.tasks:
        assert load_task(name).name == name


def test_finetune_command_composes_and_requires_a_checkpoint(tmp_path):
    from clozelab.finetune import finetune

    cfg = _compose("finetune", "task=mrpc")
    assert cfg.task.text_pair == "#2 String"
    with pytest.raises(ClozelabError, match="checkpoint"):
        finetune(cfg)


def test_finetune_from_a_hf_directory(tmp_path, tiny_tok):
    """A saved HF-layout BERT directory (config.json + model.safetensors + vocab) loads."""
    from safetensors.torch import save_file

    from clozelab.model.hf import hf_config_dict, to_hf_state_dict
    from clozelab.training.loading import load_backbone

    body = load_backbone("none", arch=OmegaConf.create(TINY_ARCH), tokenizer=tiny_tok)
    hf = tmp_path / "hf"
    hf.mkdir()
    state = {k: v.contiguous() for k, v in to_hf_state_dict(body.embedding, body.encoder).items()}
    save_file(state, str(hf / "model.safetensors"))
    (hf / "config.json").write_text(json.dumps(hf_config_dict(body.embedding, body.encoder)))
    body.tokenizer.save(hf)
    loaded = load_backbone(str(hf))
    w = loaded.embedding.word_embeddings.weight
    assert w.shape == body.embedding.word_embeddings.weight.shape
    assert (w == body.embedding.word_embeddings.weight).all()


XLNET_ARCH = {
    **TINY_ARCH,
    "embedding": {"_target_": "clozelab.model.char_cnn.WordEmbeddings",
                  "vocab_size": "${model.vocab_size}", "hidden_size": "${model.hidden_size}",
                  "dropout": "${model.dropout}", "pad_token_id": None},
    "encoder": {"_target_": "clozelab.model.xlnet.XLNetEncoder",
                "hidden_size": "${model.hidden_size}", "num_layers": "${model.num_layers}",
                "num_heads": "${model.num_heads}",
                "intermediate_size": "${model.intermediate_size}", "dropout": "${model.dropout}"},
}  # fmt: skip


def test_xlnet_body_fine_tunes_every_task_kind(tmp_path, tiny_tok):
    """An XLNet body (relative positions and segments, no perm mask): classification reads the
    last token's summary by default, as XLNet does; token labelling and QA read every state."""
    arch = OmegaConf.create(XLNET_ARCH)

    def run(task, **kw):
        return run_task(task, "none", seeds=[1], eval_dir=tmp_path / "eval", arch=arch,
                        random_init={"tokenizer": tiny_tok}, **kw)  # fmt: skip

    rows = ["sentence\tlabel"] + [f"good movie {i}\t1" for i in range(8)]
    rows += [f"bad river {i}\t0" for i in range(8)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n", "utf-8")
    (tmp_path / "dev.tsv").write_text("\n".join(rows[:1] + rows[5:13]) + "\n", "utf-8")
    sst = OmegaConf.merge(load_task("sst2"), {"path": str(tmp_path), **SMALL, "epochs": 15})
    result = run(sst)
    assert result["protocol"]["pooling"] == "last" and result["value"] > 0.8
    sent = "Paris NNP I-NP I-LOC\nis VBZ I-VP O\ngood JJ I-NP O\n\n"
    (tmp_path / "train.txt").write_text("-DOCSTART- -X- -X- O\n\n" + sent * 12, "utf-8")
    (tmp_path / "dev.txt").write_text(sent * 3, "utf-8")
    conll = OmegaConf.merge(load_task("conll2003"), {"path": str(tmp_path), **SMALL, "epochs": 10})
    assert run(conll)["value"] == pytest.approx(1.0)
    context = "the river crossed the city . the king built a large library ."
    qas = [{"id": f"q{i}", "question": "who built the library ?",
            "answers": [{"text": "the king", "answer_start": 30}]} for i in range(6)]  # fmt: skip
    payload = {"data": [{"title": "a", "paragraphs": [{"context": context, "qas": qas}]}]}
    (tmp_path / "s.json").write_text(json.dumps(payload), "utf-8")
    squad = OmegaConf.merge(load_task("squad"), {"path": str(tmp_path), "train": "s.json",
                            "validation": "s.json", **SMALL, "epochs": 10, "doc_stride": 4,
                            "max_seq_length": 16})  # fmt: skip
    assert run(squad)["metrics"]["f1"]["mean"] > 50


def test_finetune_of_a_run_writes_inside_the_run_and_says_where(compose_pretrain, tmp_path,
                                                               monkeypatch, capsys):  # fmt: skip
    """``clozelab finetune checkpoint=RUN``: eval/<task>.json in the run, named in the log; its
    log, config and CSV under RUN/eval/finetune/<time>/, no new outputs/ directory."""
    from clozelab.cli import main
    from clozelab.pretrain import pretrain

    cfg = compose_pretrain("trainer.max_steps=2", "initial_validation=false")
    pretrain(cfg)
    run = Path(cfg.paths.output_dir)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    main(["finetune", "task=polarity", f"checkpoint={run}", "seeds=[1]", "task.epochs=1",
          "task.max_train_examples=16", "task.max_eval_examples=16", "logger=csv"])  # fmt: skip
    assert (run / "eval" / "polarity.json").is_file()
    assert f"-> {run / 'eval' / 'polarity.json'}" in capsys.readouterr().out
    assert list(work.iterdir()) == []  # no outputs/<date>/<time>/ beside the user
    (job,) = (run / "eval" / "finetune").iterdir()
    assert (job / "csv" / "metrics.csv").is_file()
    assert "polarity.json" in (job / "finetune.log").read_text()
