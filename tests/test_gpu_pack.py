"""experiments/gpu_pack.py (issue 17's GPU pack) on CPU with tiny sizes, so that the day it runs
on a GPU it cannot fail for a typo: every bench variant composes (and, marked slow, the whole
pack runs: the bench matrix, the masking-rate sweep with its mask-only arm, the report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import load_experiment_script

from clozelab.core.errors import ClozelabError

ROOT = Path(__file__).resolve().parents[1]


def _tiny_glue(root):
    """SST-2 and MRPC in GLUE's TSV layout, a few rows each."""
    (root / "sst2").mkdir(parents=True)
    (root / "mrpc").mkdir()
    for split, n in (("train", 16), ("dev", 8)):
        rows = [f"a {'good' if i % 2 else 'dull'} film number {i}\t{i % 2}" for i in range(n)]
        (root / "sst2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
        pairs = [f"{i % 2}\t{i}\t{i + 50}\tthe cat sat {i}\tthe cat {'sat' if i % 2 else 'ran'}"
                 for i in range(n)]  # fmt: skip
        header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        (root / "mrpc" / f"{split}.tsv").write_text(header + "\n".join(pairs) + "\n")
    return root


def test_every_bench_variant_composes_for_the_gpu():
    from hydra import compose, initialize_config_dir

    from clozelab.core.config import conf_dir

    pack = load_experiment_script("gpu_pack.py")
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        for size in pack.SIZES.values():
            for options in pack.VARIANTS.values():
                cfg = compose("bench", overrides=pack.bench_overrides("cuda", size, options, False))
                p = cfg.bench.pretrain
                assert (p.num_layers, p.hidden_size, p.seq_len, list(p.precisions)) == (
                    size["num_layers"], size["hidden_size"], 128, ["bf16"])  # fmt: skip
                assert cfg.bench.device == "cuda" and p.vocab_size == 30522
                assert p.compile == options.get("compile", False)
            cfg = compose("bench", overrides=pack.unpad_overrides("cuda", size, False))
            assert list(cfg.bench.sections) == ["unpad"]


def test_the_seq2seq_step_runs_quick_and_is_reported(tmp_path):
    """Issue 18's encoder-decoder step in the pack: composes at GPU sizes, runs at tiny ones
    (ours vs HF T5 in fp32 and bf16, generation), and its target reaches the README."""
    from hydra import compose, initialize_config_dir

    from clozelab.core.config import conf_dir

    pack = load_experiment_script("gpu_pack.py")
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        s = compose("bench", overrides=pack.seq2seq_overrides("cuda", False)).bench.seq2seq
    assert (s.num_layers, s.hidden_size, s.seq_len, s.batch_size) == (4, 256, 128, 128)
    assert list(s.precisions) == ["fp32", "bf16"] and s.hf
    result = pack.run_bench(tmp_path / "t5", pack.seq2seq_overrides("cpu", True))
    row = pack.seq2seq_row(result)
    assert row["loss_abs_diff"] <= 1e-4 and row["clozelab_tokens_per_s"] > 0
    assert row["ratio"] == row["clozelab_tokens_per_s"] / row["hf_tokens_per_s"]
    assert row["target"] == {"value": row["ratio"], "target": 1.5, "pass": row["ratio"] >= 1.5}
    assert row["generate_cached_tokens_per_s"] > 0 and "ratio_bf16_vs_hf_bf16" in row
    compiled = pack.seq2seq_row(
        pack.run_bench(tmp_path / "t5c", pack.seq2seq_overrides("cpu", True, compile=True))
    )
    assert compiled["compiled_graphs"] > 0 and compiled["recompiles_while_timing"] == 0
    assert compiled["loss_abs_diff"] <= 1e-4 and "ratio_bf16" not in compiled
    lines = pack.seq2seq_lines(row, compiled)
    verdict = "**PASS**" if row["target"]["pass"] else "**FAIL**"
    assert any(line.startswith("| fp32 |") for line in lines) and verdict in lines[-2]
    assert any(line.startswith("| fp32, ours compiled |") for line in lines)
    assert lines[-1].startswith("- fp32 step, ours compiled, x HF tokens/s")


def test_targets_are_checked_on_model_base():
    rows = [
        {"model": "base", "variant": "sdpa", "tokens_per_s": 100.0, "mfu": 0.3,
         "ratio_vs_hf": 1.0, "recompiles": None},
        {"model": "base", "variant": "flash_compile", "tokens_per_s": 160.0, "mfu": 0.45,
         "ratio_vs_hf": 1.6, "recompiles": 0},
        {"model": "mini", "variant": "flash_compile", "tokens_per_s": 900.0, "mfu": 0.1,
         "ratio_vs_hf": 1.1, "recompiles": 2},
    ]  # fmt: skip
    targets = load_experiment_script("gpu_pack.py").check_targets(rows)
    assert targets["best_base_variant"] == "flash_compile"
    assert targets["mfu"]["pass"] and targets["ratio_vs_hf"]["pass"]
    assert not targets["no_recompiles"]["pass"] and targets["no_recompiles"]["value"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(ClozelabError, match="--device cuda"):
        load_experiment_script("gpu_pack.py").main(["--out", str(tmp_path)])


# Installed on this project's dependencies but absent from the device image (its package list in
# the device tool's KINDS.md, read 2026-11-17): the pack must run without them.
ABSENT_ON_DEVICE = (
    "wandb",
    "gensim",
    "chatterbot_corpus",
    "datasets",
    "submitit",
    "optuna",
    "hydra_plugins.hydra_submitit_launcher",
    "hydra_plugins.hydra_optuna_sweeper",
)

BLOCKER = """import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in {absent!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the device)")
sys.meta_path.insert(0, _Absent())
"""


@pytest.mark.slow
def test_the_whole_pack_runs_on_cpu_with_tiny_sizes(tmp_path, text_corpus, cache_dir):
    """The command the device runs, in a process (and its sweep jobs) where the packages the
    device image lacks cannot be imported."""
    out = tmp_path / "gpu"
    data = _tiny_glue(tmp_path / "data")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(absent=ABSENT_ON_DEVICE))
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    args = ["--device", "cpu", "--quick", "--corpus", str(text_corpus), "--data-dir", str(data),
            "--out", str(out), "--studies", str(tmp_path / "jobs")]  # fmt: skip
    probe = subprocess.run([sys.executable, "-c", "import wandb"], env={**os.environ,
                           "PYTHONPATH": path}, capture_output=True, text=True)  # fmt: skip
    assert probe.returncode == 1 and "absent on the device" in probe.stderr
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu_pack.py"), *args],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": path},
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    pack = json.loads((out / "pack.json").read_text())
    assert len(pack["bench_rows"]) == 8 and set(pack["unpad"]) == {"mini", "base"}
    for row in pack["bench_rows"]:
        assert row["tokens_per_s"] > 0 and row["mfu"] > 0 and row["loss_abs_diff"] <= 1e-4
    compiled = [r for r in pack["bench_rows"] if r["variant"] == "flash_compile"]
    assert [r["recompiles"] for r in compiled] == [0, 0]  # one batch shape: no recompiles
    jobs = pack["study"]["jobs"]
    assert len(jobs) == 3 and all(j["status"] == "completed" for j in jobs)
    assert all(j["val/ref_mlm_acc"] is not None and "eval/sst2/accuracy" in j["eval"]
               for j in jobs)  # fmt: skip
    assert pack["study"]["report_rc"] == 0 and (out / "masking_rate" / "report.md").is_file()
    assert (tmp_path / "jobs" / "masking_rate_gpu").is_dir() and not (out / "studies").exists()
    readme = (out / "README.md").read_text()
    assert "**PASS**" in readme or "**FAIL**" in readme
    assert "corruption.rate=0.4 setting=ops_mask_only" in readme
    assert "T5ForConditionalGeneration" in readme and pack["seq2seq"]["loss_abs_diff"] <= 1e-4


def _prepare(cwd, *args, wheels=None):
    script = ROOT / "experiments" / "results" / "prepare_gpu_pack.sh"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        **({"WHEELS_FROM": str(wheels)} if wheels else {}),
    }
    return subprocess.run(["bash", str(script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True)  # fmt: skip


def test_prepare_gpu_pack_lays_out_what_the_device_call_carries(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".gitignore").write_text("studies/\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    names = ["hydra_core-1.3.8", "omegaconf-2.3.1", "hydra_joblib_launcher-1.2.0",
             "blingfire-0.1.8", "antlr4_python3_runtime-4.9.3"]  # fmt: skip
    for name in names:
        (wheels / f"{name}-py3-none-any.whl").write_bytes(b"wheel")
    data = _tiny_glue(tmp_path / "data")
    (repo / "studies" / "corpus").mkdir(parents=True)  # present: not rebuilt
    done = _prepare(repo, "studies", str(data), wheels=wheels)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (repo / "studies/whl").iterdir()) == sorted(
        f"{n}-py3-none-any.whl" for n in names
    )
    for task in ("sst2", "mrpc"):
        for split in ("train", "dev"):
            copied = repo / "studies/glue" / task / f"{split}.tsv"
            assert copied.read_text() == (data / task / f"{split}.tsv").read_text()
    assert "--corpus studies/corpus --data-dir studies/glue" in done.stdout
    assert "--target /tmp/site studies/whl/*.whl" in done.stdout

    not_ignored = _prepare(repo, "elsewhere", str(data), wheels=wheels)
    assert not_ignored.returncode == 2 and "not git-ignored" in not_ignored.stderr
    (data / "mrpc" / "dev.tsv").unlink()
    missing = _prepare(repo, "studies", str(data), wheels=wheels)
    assert missing.returncode == 2 and "mrpc/dev.tsv: missing" in missing.stderr
