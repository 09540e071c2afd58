"""experiments/results/nsp_ablation/shared_reference.py: one masked-LM yardstick for jobs of
different input formats (FULL-SENTENCES vs SEGMENT-PAIR+NSP), on tiny finished runs."""

from __future__ import annotations

import pytest
from helpers import load_experiment_script
from omegaconf import OmegaConf

import clozelab
from clozelab.pretrain import pretrain

REFERENCE = (
    "validation_reference={_target_:clozelab.corruption.mask.TokenMasking,rate:0.15,"
    "mask_prob:0.8,random_prob:0.1,keep_prob:0.1}"
)
SCRIPT = ("results", "nsp_ablation", "shared_reference.py")


def test_jobs_of_both_formats_are_scored_on_the_same_masked_batches(compose_pretrain, tmp_path):
    full, pair, other = tmp_path / "full", tmp_path / "pair", tmp_path / "other"
    common = ("initial_validation=false", REFERENCE)
    pretrain(compose_pretrain(*common, "setting=full_sentences", f"paths.output_dir={full}"))
    pretrain(compose_pretrain(*common, "setting=segment_pair_nsp", f"paths.output_dir={pair}"))
    script = load_experiment_script(*SCRIPT)
    out = tmp_path / "shared.json"
    result = script.main([str(full), str(full), str(pair), "--out", str(out)])
    rows = result["jobs"]
    assert result["reference"]["instances"] == "full_sentences"
    assert [r["instances"] for r in rows.values()] == ["full_sentences", "segment_pair"]
    counts = {r["masked_tokens"] for r in rows.values()}
    assert len(counts) == 1 and counts.pop() > 0  # the very same masked positions
    for r in rows.values():
        assert 0.0 <= r["shared_ref_mlm_acc"] <= 1.0 and r["shared_ref_mlm_loss"] > 0
    again = script.main([str(full), str(pair)])["jobs"]
    assert again[str(pair)] == rows[str(pair)]  # fixed seed: the same batches every time
    assert out.is_file()

    pretrain(compose_pretrain(*common, "tokenizer.vocab_size=150", f"paths.output_dir={other}"))
    with pytest.raises(SystemExit, match="tokenizer differs"):
        script.main([str(full), str(other)])
    plain = tmp_path / "plain"  # trained without a reference masking
    pretrain(compose_pretrain("initial_validation=false", f"paths.output_dir={plain}"))
    with pytest.raises(SystemExit, match="validation_reference is null"):
        script.main([str(plain), str(full)])


def test_set_changes_the_reference_masking_and_refuses_unknown_keys(compose_pretrain, tmp_path):
    full = tmp_path / "full"
    pretrain(compose_pretrain("initial_validation=false", REFERENCE, f"paths.output_dir={full}"))
    script = load_experiment_script(*SCRIPT)
    cfg = OmegaConf.load(full / "config.yaml")
    all_mask = {"mask_prob": 1.0, "random_prob": 0.0, "keep_prob": 0.0}
    batches = script.reference_batches(full, cfg, 0, all_mask)
    mask_id = clozelab.load_tokenizer(full).mask_token_id
    picked = [b["input_ids"][b["mlm_labels"] != -100] for b in batches]
    assert sum(len(p) for p in picked) > 0 and all(bool((p == mask_id).all()) for p in picked)
    default = script.reference_batches(full, cfg, 0)  # 80/10/10: some targets stay visible
    shown = [b["input_ids"][b["mlm_labels"] != -100] for b in default]
    assert any(bool((p != mask_id).any()) for p in shown)
    args = [str(full), str(full)] + [f"--set={k}={v}" for k, v in all_mask.items()]
    result = script.main(args)
    assert result["reference"]["masking"]["mask_prob"] == 1.0
    assert result["reference"]["masking"]["rate"] == 0.15
    with pytest.raises(SystemExit, match="has no key 'mask_rate'"):
        script.main([str(full), str(full), "--set", "mask_rate=0.2"])
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        script.main([str(full), str(full), "--set", "mask_prob"])
