"""experiments/results/nsp_ablation/shared_reference.py: one masked-LM yardstick for jobs of
different input formats (FULL-SENTENCES vs SEGMENT-PAIR+NSP), on tiny finished runs."""

from __future__ import annotations

import importlib.util

import pytest

from clozelab.core.config import resource_dir
from clozelab.pretrain import pretrain

REFERENCE = (
    "validation_reference={_target_:clozelab.corruption.mask.TokenMasking,rate:0.15,"
    "mask_prob:0.8,random_prob:0.1,keep_prob:0.1}"
)


def _script():
    path = resource_dir("experiments") / "results" / "nsp_ablation" / "shared_reference.py"
    spec = importlib.util.spec_from_file_location("shared_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jobs_of_both_formats_are_scored_on_the_same_masked_batches(compose_pretrain, tmp_path):
    full, pair, other = tmp_path / "full", tmp_path / "pair", tmp_path / "other"
    common = ("initial_validation=false", REFERENCE)
    pretrain(compose_pretrain(*common, "setting=full_sentences", f"paths.output_dir={full}"))
    pretrain(compose_pretrain(*common, "setting=segment_pair_nsp", f"paths.output_dir={pair}"))
    script = _script()
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
