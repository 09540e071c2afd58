"""clozelab export: a run directory -> an HF directory transformers loads, with the same logits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from clozelab.cli import main
from clozelab.core.errors import ClozelabError
from clozelab.export import export
from clozelab.pretrain import pretrain

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir, text_corpus) -> Path:
    """A finished 2-step tiny pre-training run (MLM + NSP)."""
    from helpers import TINY
    from hydra import compose, initialize_config_dir

    from clozelab.core.config import conf_dir, register_overlays

    register_overlays()
    run_dir = tmp_path_factory.mktemp("export") / "run"
    overrides = [*TINY, f"data.corpus={text_corpus}", f"paths.output_dir={run_dir}",
                 f"paths.cache_dir={cache_dir}", "trainer.max_steps=2",
                 "initial_validation=false"]  # fmt: skip
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        pretrain(compose("pretrain", overrides=overrides))
    return run_dir


def _batch(tokenizer):
    texts = [("the old river crosses the city", "a king founded it"), ("a painter", None)]
    enc = tokenizer([a for a, _ in texts], [b or "" for _, b in texts], padding=True,
                    return_tensors="pt")  # fmt: skip
    assert (enc["attention_mask"] == 0).any() and (enc["token_type_ids"] == 1).any()
    return enc


def test_export_cli_loads_in_transformers_with_same_logits(tiny_run, tmp_path, capsys):
    import clozelab

    out = tmp_path / "hf"
    main(["export", str(tiny_run), str(out)])
    assert "exported" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_act"] == "gelu" and config["architectures"] == ["BertForPreTraining"]
    hf, info = transformers.BertForPreTraining.from_pretrained(
        out, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ours_tok = clozelab.load_tokenizer(tiny_run)
    batch = _batch(tok)
    assert torch.equal(batch["input_ids"], _batch(ours_tok)["input_ids"])
    model = clozelab.load(tiny_run)
    hf.eval()
    with torch.no_grad():
        ref = hf(**batch, output_hidden_states=True)
        states = model.encode(**batch).hidden_states
        mlm = model.mlm_logits(**batch)
        nsp = model.nsp_logits(**batch)
    real = batch["attention_mask"].bool()
    assert len(states) == len(ref.hidden_states)
    for ours, theirs in zip(states, ref.hidden_states):
        assert (ours - theirs)[real].abs().max() <= 1e-4
    assert (mlm - ref.prediction_logits)[real].abs().max() <= 1e-4
    assert (nsp - ref.seq_relationship_logits).abs().max() <= 1e-4


def test_run_writes_hf_dir_equal_to_export(tiny_run, tmp_path):
    assert (tiny_run / "hf" / "model.safetensors").is_file()
    out = export(tiny_run / "checkpoints" / "last.ckpt", tmp_path / "again")
    ours, again = (
        load_file(tiny_run / "hf" / "model.safetensors"),
        load_file(out / "model.safetensors"),
    )
    assert set(ours) == set(again)
    assert all(torch.equal(ours[k], again[k]) for k in ours)
    assert "cls.predictions.decoder.weight" not in ours  # tied alias left out, HF re-ties it
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).is_file()


def test_export_errors(tmp_path, capsys):
    with pytest.raises(ClozelabError, match="no such file"):
        export(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path / "run"), str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "config.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path)])  # OUT_DIR missing: argparse usage error


def _modes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mode & 0o777
            for p in directory.rglob("*") if p.is_file()}  # fmt: skip


def test_written_files_get_the_users_umask_mode(tiny_run, tmp_path):
    """Checkpoints and exports go through private temporaries (mkstemp and safetensors create
    0600 files); the files left must carry the umask's mode like every other file of the run."""
    from clozelab.core.rundir import current_umask

    usual = 0o666 & ~current_umask()
    assert _modes(tiny_run)["checkpoints/last.ckpt"] == usual
    assert _modes(tiny_run)["hf/model.safetensors"] == usual
    assert {m for m in _modes(tiny_run).values()} == {usual}, _modes(tiny_run)
    previous = os.umask(0o027)
    try:
        out = export(tiny_run, tmp_path / "shared")
    finally:
        os.umask(previous)
    modes = _modes(out)
    assert "model.safetensors" in modes and "config.json" in modes
    assert set(modes.values()) == {0o640}, modes


@pytest.mark.parametrize("model_type", ["t5", "bart"])
def test_an_exported_encoder_decoder_folder_points_to_its_run_directory(tmp_path, model_type):
    # finetune checkpoint=RUN/hf of a T5/BART run: its config.json is not BERT's or XLNet's
    from clozelab.core.rundir import read_hf_config

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "d_model": 32}))
    with pytest.raises(ClozelabError, match=rf"an HF {model_type} config.json.*checkpoint=RUN"):
        read_hf_config(tmp_path)
