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


@pytest.mark.parametrize("name", ["span", "whole_word", "delete", "phrase", "mask_insert", "plm"])
def test_preview_writes_statistics(compose_pretrain, tmp_path, name, capsys):
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
    assert set(written["op_fractions"]) == {
        "mask",
        "replace",
        "keep",
        "delete",
        "reorder",
        "insert",
    }
    if name == "span":
        assert 0.14 < written["corrupted_fraction"] < 0.2  # ceil(0.15 n) per sequence
        assert written["span_length_tokens_mean"] > 1.5
        assert abs(written["op_fractions"]["mask"] - 0.8) < 0.1
    if name == "delete":
        assert written["op_fractions"]["delete"] == 1.0
    if name == "plm":  # XLNet: ~1/6 predicted in spans, every rule of the order kept
        assert 0.12 < written["plm_predicted_fraction"] < 0.2
        assert 1.5 < written["plm_span_length_tokens_mean"] < 3.0
        assert written["plm_order_violations"] == 0
        assert 0 < written["plm_first_prediction_context_fraction_mean"] < 1
        return
    if name == "mask_insert":  # 12% masked + 3% inserted: one budget
        assert abs(written["corrupted_fraction"] - 0.15) < 0.02
        assert 0.15 < written["op_fractions"]["insert"] < 0.25

    printed = capsys.readouterr().out
    assert "legend: [MASK] a masked token · {new<-old} a token replaced" in printed
    assert "merged spans" in written["span_lengths"]
    if name in ("span", "whole_word"):
        assert "merged span lengths in words (length:count): 1:" in printed
    if name != "mask_insert":
        assert ("span_bounds" in written["produces"]) == (name in ("span", "phrase"))
    assert "mlm_labels" in written["produces"] or name == "delete"


S2S_PRESETS = [
    "t5_span", "t5_iid", "t5_drop", "t5_drop_spans", "t5_prefix_lm", "t5_bert", "t5_mass_style",
    "t5_deshuffle", "bart", "bart_infill", "bart_token_mask", "bart_token_delete", "bart_permute",
    "bart_rotate", "mass", "insert_restore",
]  # fmt: skip


@pytest.mark.parametrize("name", S2S_PRESETS)
def test_preview_of_seq2seq_corruptions(compose_pretrain, tmp_path, name):
    from clozelab.preview import preview

    cfg = compose_pretrain(
        f"corruption={name}", "preview.sequences=32", "data.max_seq_length=64", name="preview",
        drop=PREVIEW_DROP,
    )  # fmt: skip
    stats = preview(cfg)
    assert json.loads((tmp_path / "run" / "preview.json").read_text()) == stats
    assert stats["special_tokens_touched"] == 0 and stats["sequences"] > 0
    assert stats["source_tokens_mean"] <= 64 and "=>" in stats["examples"][0]
    if name == "t5_span":  # noise density 0.15 + one eos per row; mean span ~3
        assert 0.15 < stats["target_content_per_candidate"] < 0.2
        assert 2.5 < stats["span_length_tokens_mean"] < 3.5
        assert "<extra_id_0>" in stats["examples"][0]
    if name == "bart":  # infilling: ~0.82 of the length, one [MASK] per span
        assert 0.7 < stats["source_to_input"] < 0.9 and stats["masks_per_sequence"] > 1
    if name == "mass":
        assert 0.4 < stats["target_content_per_candidate"] < 0.6


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


@pytest.mark.parametrize("recipe", ["t5", "bart", "mass"])
def test_preview_of_the_seq2seq_recipes(compose_pretrain, tmp_path, recipe):
    """``clozelab preview experiment=t5|bart|mass`` composes (the recipes override /decoder) and
    previews the recipe's corruption on its full_sentences rows."""
    from clozelab.preview import preview

    cfg = compose_pretrain(
        f"experiment={recipe}", "preview.sequences=16", "data.max_seq_length=32", name="preview",
        drop=PREVIEW_DROP,
    )  # fmt: skip
    stats = preview(cfg)
    assert stats["corruption"] == cfg.corruption._target_ and "=>" in stats["examples"][0]
    assert stats["source_tokens_mean"] <= 32 and "pair_kinds" not in stats
