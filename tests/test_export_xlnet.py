"""XLNet runs and HF XLNet directories: ``clozelab export`` writes an ``XLNetLMHeadModel``
directory transformers loads with nothing missing and the same logits; HF XLNet directories load
through ``clozelab.load``, ``model.init_from`` and the fine-tuning backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clozelab.bench.plm import hf_plm_output
from clozelab.cli import main
from clozelab.core.errors import ClozelabError
from clozelab.corruption.permutation import PermutationTargets
from clozelab.model.hf_xlnet import to_hf_xlnet_state_dict

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def xlnet_run(tmp_path_factory, cache_dir, text_corpus) -> Path:
    """A finished 2-step tiny run of the xlnet recipe (two-stream encoder, PLM)."""
    from helpers import TINY
    from hydra import compose, initialize_config_dir

    from clozelab.core.config import conf_dir, register_overlays
    from clozelab.pretrain import pretrain

    register_overlays()
    run_dir = tmp_path_factory.mktemp("xlnet_export") / "run"
    overrides = [
        *TINY,
        "experiment=xlnet",
        f"data.corpus={text_corpus}",
        f"paths.output_dir={run_dir}",
        f"paths.cache_dir={cache_dir}",
        "trainer.max_steps=2",
        "initial_validation=false",
        "eval.suite=null",
    ]
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        pretrain(compose("pretrain", overrides=overrides))
    return run_dir


def _plm_batch(tokenizer, seed: int = 0) -> dict:
    """Two encoded pairs (one padded) with permutation targets."""
    enc = tokenizer(
        ["the old river crosses the city", "a painter"],
        ["a king founded it", ""],
        padding=True,
        return_tensors="pt",
    )
    special = torch.tensor(
        [
            tokenizer.get_special_tokens_mask(row.tolist(), already_has_special_tokens=True)
            for row in enc["input_ids"]
        ]
    )
    batch = {**enc, "special_tokens_mask": special}
    batch = PermutationTargets(k=3)(batch, torch.Generator().manual_seed(seed))
    assert (batch["attention_mask"] == 0).any() and (batch["token_type_ids"] == 1).any()
    return batch


def _hf_logits(hf, batch):
    with torch.no_grad():
        return hf_plm_output(hf, batch).logits


def _our_logits(model, batch):
    with torch.no_grad():
        return model.plm_logits(
            batch["input_ids"],
            batch["perm_mask"],
            batch["target_mapping"],
            batch["attention_mask"],
            batch["token_type_ids"],
        )


def test_export_of_an_xlnet_run_loads_in_transformers_with_same_logits(xlnet_run, tmp_path, capsys):
    import clozelab

    out = tmp_path / "hf"
    main(["export", str(xlnet_run), str(out)])
    assert "exported" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "xlnet" and config["architectures"] == ["XLNetLMHeadModel"]
    hf, info = transformers.XLNetLMHeadModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    hf.eval()
    assert hf.lm_loss.weight.data_ptr() == hf.transformer.word_embedding.weight.data_ptr()
    model = clozelab.load(xlnet_run)
    assert model.plm is not None and model.mlm is None
    batch = _plm_batch(clozelab.load_tokenizer(xlnet_run))
    assert (_our_logits(model, batch) - _hf_logits(hf, batch)).abs().max() < TOL
    # the body without a perm mask (fine-tuning view): XLNetModel's output, relative segments on
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        ours = model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        theirs = hf.transformer(
            input_ids=batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            attention_mask=batch["attention_mask"],
        )
    assert (ours.last_hidden_state - theirs.last_hidden_state)[real].abs().max() < TOL
    # the run's own hf/ (written at its end) is the same directory
    written, again = (
        load_file(xlnet_run / "hf" / "model.safetensors"),
        load_file(out / "model.safetensors"),
    )
    assert written.keys() == again.keys() and "lm_loss.weight" not in written
    assert all(torch.equal(written[k], again[k]) for k in written)


def test_hf_xlnet_to_ours_to_hf_is_exact(tmp_path):
    """HF -> ours -> HF gives every tensor back bitwise, and ``clozelab.load`` of an HF XLNet
    directory gives HF's logits."""
    import clozelab

    config = transformers.XLNetConfig(
        vocab_size=61, d_model=32, n_layer=2, n_head=4, d_inner=48, mem_len=None
    )
    torch.manual_seed(0)
    hf = transformers.XLNetLMHeadModel(config).eval()
    with torch.no_grad():
        hf.lm_loss.bias.normal_()
    hf.save_pretrained(tmp_path)
    model = clozelab.load(tmp_path)
    assert model.load_report == {"missing": [], "unexpected": []}
    back = to_hf_xlnet_state_dict(model.embedding, model.encoder, model.plm.bias)
    reference = hf.state_dict()
    assert back.keys() == reference.keys()
    assert all(torch.equal(back[k], reference[k]) for k in reference)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 61, (2, 10), generator=g)
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": (torch.arange(10) > 4).long().expand(2, 10),
        "special_tokens_mask": torch.zeros_like(ids),
    }
    batch = PermutationTargets(k=3)(batch, g)
    assert (_our_logits(model, batch) - _hf_logits(hf, batch)).abs().max() < TOL


def test_hf_xlnet_dir_initialises_a_run_and_a_fine_tuning_body(xlnet_run, tmp_path):
    """``model.init_from`` = an HF XLNet directory fills the body and the PLM bias; the
    fine-tuning backbone reads the same directory with the body's weights."""
    from omegaconf import OmegaConf

    from clozelab.data.tokenizer import load_tokenizer
    from clozelab.training.components import build_components
    from clozelab.training.loading import init_components, load_backbone

    out = tmp_path / "hf"
    main(["export", str(xlnet_run), str(out)])
    cfg = OmegaConf.load(xlnet_run / "config.yaml")
    tokenizer = load_tokenizer(xlnet_run / "tokenizer")
    embedding, encoder, objectives, _ = build_components(cfg, tokenizer)
    report = init_components(str(out), embedding, encoder, objectives, tokenizer)
    assert report == {"missing": [], "unexpected": []}
    trained = load_file(out / "model.safetensors")
    again = to_hf_xlnet_state_dict(embedding, encoder, objectives["plm"].bias, include_tied=False)
    assert all(torch.equal(trained[k], again[k]) for k in trained)
    body = load_backbone(str(out))
    assert body.encoder.summary_pooling == "last"
    state = to_hf_xlnet_state_dict(body.embedding, body.encoder)
    assert all(torch.equal(state[k], trained[k]) for k in state)
    # a model of other sizes is refused, the weight named
    other = OmegaConf.merge(cfg, {"encoder": {"intermediate_size": 16}})
    embedding, encoder, objectives, _ = build_components(other, tokenizer)
    with pytest.raises(ClozelabError, match=r"layer_1.weight\].*does not fit"):
        init_components(str(out), embedding, encoder, objectives, tokenizer)


def test_xlnet_export_refuses_an_embedding_with_more_than_a_word_table():
    """``embedding=bert encoder=xlnet`` trains (absolute positions, segments and a LayerNorm
    before the two streams), but XLNetLMHeadModel has nowhere to put those weights: the export
    (and an HF XLNet import) is refused naming the embedding instead of silently dropping them."""
    from clozelab.model.char_cnn import WordEmbeddings
    from clozelab.model.embeddings import BertEmbeddings
    from clozelab.model.xlnet import XLNetEncoder

    torch.manual_seed(0)
    encoder = XLNetEncoder(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    bias = torch.zeros(40)
    state = to_hf_xlnet_state_dict(WordEmbeddings(40, 16, pad_token_id=None), encoder, bias)
    assert "transformer.word_embedding.weight" in state
    with pytest.raises(ClozelabError, match="embedding/encoder.*BertEmbeddings"):
        to_hf_xlnet_state_dict(BertEmbeddings(40, 16), encoder, bias)
