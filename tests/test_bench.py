"""clozelab bench: a tiny smoke run writes bench.json (no timing assertions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from clozelab.bench import bench
from clozelab.bench.pretrain import step_flops
from clozelab.core.errors import ClozelabError

pytest.importorskip("transformers")

TINY_BENCH = [
    "bench.matmul.size=64", "bench.matmul.repeats=1", "bench.pretrain.num_layers=1",
    "bench.pretrain.hidden_size=32", "bench.pretrain.num_heads=2",
    "bench.pretrain.intermediate_size=64", "bench.pretrain.vocab_size=300",
    "bench.pretrain.seq_len=16", "bench.pretrain.batch_size=4", "bench.pretrain.batches=2",
    "bench.pretrain.steps=1", "bench.pretrain.rounds=1", "bench.pretrain.warmup_steps=0",
    "bench.corruption.seq_len=16", "bench.corruption.batch=4",
    "bench.corruption.presets=[mask,span]",
]  # fmt: skip


def _compose(tmp_path: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from clozelab.core.config import conf_dir

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("bench", overrides=[*TINY_BENCH, f"paths.output_dir={tmp_path}",
                                           *overrides])  # fmt: skip


def test_bench_smoke_writes_bench_json(tmp_path, capsys):
    results = bench(_compose(tmp_path))
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written == results
    for key in ("pretrain.clozelab_tokens_per_s", "pretrain.hf_tokens_per_s", "pretrain.ratio",
                "pretrain.ratio_bf16", "pretrain.clozelab_mfu", "pretrain.data_share",
                "matmul.fp32_gflops", "matmul.bf16_gflops", "plm.ratio", "plm.ratio_cpu",
                "plm.clozelab_tokens_per_cpu_s", "plm.hf_tokens_per_cpu_s"):  # fmt: skip
        assert math.isfinite(written[key]) and written[key] > 0, key
    assert written["plm.loss_abs_diff"] <= 1e-4  # the XLNet PLM step against XLNetLMHeadModel
    assert 0 < written["pretrain.data_share"] < 1
    # Same weights, same batch, dropout off: the same pre-training loss as transformers.
    assert written["pretrain.loss_abs_diff"] <= 1e-4
    assert "corruption.available" in written
    assert "pretrain.ratio" in capsys.readouterr().out


def test_bench_sections_and_errors(tmp_path):
    only = (
        "bench.sections=[pretrain]",
        "bench.pretrain.precisions=[fp32]",
        "bench.pretrain.hf=false",
    )
    results = bench(_compose(tmp_path, *only))
    assert "pretrain.hf_tokens_per_s" not in results and "corruption.available" not in results
    with pytest.raises(ClozelabError, match="bench.sections"):
        bench(_compose(tmp_path, "bench.sections=[nope]"))
    with pytest.raises(ClozelabError, match="bench.pretrain.precisions"):
        bench(_compose(tmp_path, "bench.sections=[pretrain]", "bench.pretrain.precisions=[fp8]"))


def test_step_flops_counts_predicted_positions_only():
    base = step_flops(4, 256, 1024, 30522, 32, 128, predicted=0)
    assert step_flops(4, 256, 1024, 30522, 32, 128, predicted=10) - base == 3 * 10 * 2 * (
        256 * 256 + 256 * 30522
    )


def test_unpad_section_side_by_side(tmp_path):
    results = bench(_compose(tmp_path, "bench.sections=[unpad]", "bench.unpad.min_length=4",
                             "bench.unpad.layouts=[padded,nested]",
                             "bench.unpad.precisions=[fp32,bf16]"))  # fmt: skip
    assert json.loads((tmp_path / "bench.json").read_text()) == results
    assert 0 < results["unpad.real_token_fraction"] < 1  # lengths uniform in [4, 16]
    for key in ("unpad.padded_tokens_per_s", "unpad.unpad_tokens_per_s", "unpad.ratio",
                "unpad.ratio_nested", "unpad.hf_tokens_per_s", "unpad.ratio_vs_hf",
                "unpad.ratio_bf16", "unpad.unpad_nested_tokens_per_s_bf16"):  # fmt: skip
        assert math.isfinite(results[key]) and results[key] > 0, key
    assert results["unpad.loss_abs_diff"] <= 1e-5  # unpadding changes no number that counts
    assert "pretrain.clozelab_tokens_per_s" not in results
    assert "unpad=False" in results["pretrain.encoder"]


def test_encoder_options_and_device_errors(tmp_path):
    results = bench(_compose(tmp_path, "bench.sections=[pretrain]", "bench.pretrain.hf=false",
                             "bench.pretrain.precisions=[fp32]", "bench.pretrain.unpad=true",
                             "bench.pretrain.attention_backend=math"))  # fmt: skip
    assert "attention_backend=math, unpad=True" in results["pretrain.encoder"]
    assert results["pretrain.loss_abs_diff"] <= 1e-4  # still HF's loss at equal weights
    with pytest.raises(ClozelabError, match="bench.device"):
        bench(_compose(tmp_path, "bench.device=tpu"))
    with pytest.raises(ClozelabError, match="bench.unpad.layouts"):
        bench(_compose(tmp_path, "bench.sections=[unpad]", "bench.unpad.layouts=[ragged]"))


SEQ2SEQ_TINY = ("bench.sections=[seq2seq]", "bench.seq2seq.num_layers=1",
            "bench.seq2seq.hidden_size=32", "bench.seq2seq.num_heads=2",
            "bench.seq2seq.intermediate_size=64", "bench.seq2seq.vocab_size=300",
            "bench.seq2seq.seq_len=32", "bench.seq2seq.batch_size=4", "bench.seq2seq.batches=2",
            "bench.seq2seq.steps=1", "bench.seq2seq.rounds=1", "bench.seq2seq.warmup_steps=0",
            "bench.seq2seq.n_sentinels=10", "bench.seq2seq.precisions=[fp32,bf16]",
            "bench.seq2seq.generate_length=3", "bench.seq2seq.generate_repeats=1")  # fmt: skip


def test_seq2seq_section_side_by_side_with_hf_t5(tmp_path):
    results = bench(_compose(tmp_path, *SEQ2SEQ_TINY))
    assert json.loads((tmp_path / "bench.json").read_text()) == results
    for key in ("seq2seq.clozelab_tokens_per_s", "seq2seq.hf_tokens_per_s", "seq2seq.ratio",
                "seq2seq.ratio_bf16", "seq2seq.ratio_bf16_vs_hf_bf16",
                "seq2seq.generate_cached_tokens_per_s", "seq2seq.generate_uncached_tokens_per_s",
                "seq2seq.generate_hf_tokens_per_s", "seq2seq.ratio_cpu",
                "seq2seq.clozelab_tokens_per_cpu_s"):  # fmt: skip
        assert math.isfinite(results[key]) and results[key] > 0, key
    # same weights, same span-corrupted batch, dropout off: the same loss as transformers
    assert results["seq2seq.loss_abs_diff"] <= 1e-4
    assert results["seq2seq.source_tokens_per_batch"] == 4 * 32  # the source fills seq_len
    assert "V300+10" in results["seq2seq.config"]


def test_seq2seq_section_compiles_ours_with_its_decoder(tmp_path):
    """bench.seq2seq.compile: our layers traced (dynamo's eager backend here), one graph per
    layer kind and mode, none traced while timing (T5 span targets have one length)."""
    results = bench(_compose(tmp_path, *SEQ2SEQ_TINY, "bench.seq2seq.precisions=[fp32]",
                             "bench.seq2seq.compile=true", "bench.seq2seq.warmup_steps=1",
                             "bench.seq2seq.compile_backend=eager"))  # fmt: skip
    assert results["seq2seq.compiled_graphs"] >= 3  # embedding, encoder layer, decoder layer
    assert results["seq2seq.recompiles_while_timing"] == 0
    assert results["seq2seq.loss_abs_diff"] <= 1e-4
    assert math.isfinite(results["seq2seq.generate_cached_tokens_per_s"])


def test_knowledge_section_times_fusion_and_the_entity_pipeline(tmp_path):
    knowledge = ("bench.sections=[knowledge]", "bench.pretrain.num_layers=2",
                 "bench.knowledge.knowledge_layers=1", "bench.knowledge.entity_dim=8",
                 "bench.knowledge.num_entities=50", "bench.knowledge.mention_every=4",
                 "bench.knowledge.max_documents=4", "bench.knowledge.vocab_size=400",
                 "bench.knowledge.preprocessing_workers=0",
                 "bench.knowledge.transe_epochs=1")  # fmt: skip
    results = bench(_compose(tmp_path, *knowledge))
    for key in ("knowledge.plain_tokens_per_s", "knowledge.fusion_tokens_per_s",
                "knowledge.fusion_dea_tokens_per_s", "knowledge.fusion_step_ratio",
                "knowledge.prepare_mb_per_s", "knowledge.prepare_links_mb_per_s",
                "knowledge.transe_s_per_epoch"):  # fmt: skip
        assert math.isfinite(results[key]) and results[key] > 0, key
    assert results["knowledge.entities"] > 0 and results["knowledge.triples"] > 0
