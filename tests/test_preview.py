"""``clozelab preview``: statistics of a corruption over real shards, and the bench function."""

from __future__ import annotations

import json

import pytest

PREVIEW_DROP = (
    "model",
    "model.hidden_size",
    "model.num_heads",
    "model.intermediate_size",
    "model.num_layers",
    "trainer.max_steps",
    "trainer.val_check_interval",
    "trainer.limit_val_batches",
    "trainer.log_every_n_steps",
    "callbacks.checkpoint_every_n_steps",
    "logger",
    "eval.suite",
)


@pytest.mark.parametrize("name", ["span", "whole_word", "delete", "phrase"])
def test_preview_writes_statistics(compose_pretrain, tmp_path, name):
    from clozelab.preview import preview

    cfg = compose_pretrain(
        f"corruption={name}", "preview.sequences=64", name="preview", drop=PREVIEW_DROP
    )
    stats = preview(cfg)
    written = json.loads((tmp_path / "run" / "preview.json").read_text())
    for key in (
        "corrupted_fraction",
        "predicted_fraction",
        "op_fractions",
        "span_length_words_mean",
        "span_length_tokens_mean",
        "special_tokens_touched",
        "sequences",
    ):
        assert key in written
    assert written["special_tokens_touched"] == 0
    assert written["sequences"] == stats["sequences"] > 0
    assert set(written["op_fractions"]) == {"mask", "replace", "keep", "delete", "reorder"}
    if name == "span":
        assert 0.14 < written["corrupted_fraction"] < 0.2  # ceil(0.15 n) per sequence
        assert written["span_length_tokens_mean"] > 1.5
        assert abs(written["op_fractions"]["mask"] - 0.8) < 0.1
    if name == "delete":
        assert written["op_fractions"]["delete"] == 1.0


@pytest.mark.parametrize("single", ["random_document", "split"])
def test_preview_of_the_albert_recipe_reports_sop_pair_kinds(compose_pretrain, tmp_path, single):
    from clozelab.preview import preview

    cfg = compose_pretrain(
        "experiment=albert",
        f"data.sop_single_sentence={single}",
        "preview.sequences=32",
        name="preview",
        drop=PREVIEW_DROP,
    )
    kinds = preview(cfg)["pair_kinds"]
    assert abs(sum(kinds.values()) - 1.0) < 1e-3 and kinds["swapped"] > 0.3
    if single == "split":  # the paper: swaps only
        assert kinds["random_document"] == 0.0
    else:  # ALBERT's code: one-sentence chunks become random-document negatives
        assert kinds["random_document"] > 0.0 and kinds["split_swapped"] == 0.0


def test_bench_corruptions_reports_every_key():
    from clozelab.corruption.bench import bench_corruptions

    results = bench_corruptions(["mask", "span"], seq_len=64, batch=8, seconds=0.05)
    for key in (
        "corruption.mask.sequences_per_s",
        "corruption.span.sequences_per_s",
        "corruption.hf_token.sequences_per_s",
        "corruption.hf_whole_word.sequences_per_s",
    ):
        assert results[key] > 0
