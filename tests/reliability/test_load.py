"""Memory under load (slow): RSS stays flat over a long tiny run; preprocessing a corpus 10x larger
keeps peak memory within 1.5x. Measured in fresh subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY, write_text_corpus

PROBE = """
import json, os, sys
from clozelab.training.module import PretrainModule
samples, out = {}, sys.argv[1]
def on_train_batch_end(self, outputs, batch, batch_idx):
    if self.global_step % 50 == 0:
        with open("/proc/self/statm") as f:
            samples[self.global_step] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        with open(out, "w") as f:
            json.dump(samples, f)
PretrainModule.on_train_batch_end = on_train_batch_end
from clozelab.cli import main
main(["pretrain", *sys.argv[2:]])
"""

PEAK = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
if proc.returncode:
    sys.exit(proc.stderr[-3000:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def _env(cache_dir) -> dict:
    return dict(os.environ, CLOZELAB_CACHE_DIR=str(cache_dir))


@pytest.mark.slow
def test_rss_is_flat_over_a_long_run(tmp_path, text_corpus, cache_dir):
    samples_file = tmp_path / "rss.json"
    args = [
        *TINY,
        f"data.corpus={text_corpus}",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "trainer.max_steps=600",
        "trainer.val_check_interval=100",
        "callbacks.checkpoint_every_n_steps=100",
        "initial_validation=false",
        "eval.suite=null",
        "trainer.log_every_n_steps=10",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(samples_file), *args],
        cwd=tmp_path,
        env=_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rss = {int(k): v for k, v in json.loads(samples_file.read_text()).items()}
    # ~46 epochs of 13 batches: warm-up until step 100, then no growth across epochs
    warm, end = rss[100], rss[max(rss)]
    print(f"RSS step 100: {warm / 2**20:.1f} MiB, step {max(rss)}: {end / 2**20:.1f} MiB")
    assert end - warm < max(0.05 * warm, 16 * 2**20), rss


def _peak_prepare(corpus: Path, cache: Path) -> int:
    cmd = [
        sys.executable,
        "-m",
        "clozelab",
        "prepare",
        f"data.corpus={corpus}",
        f"paths.cache_dir={cache}",
        "tokenizer.vocab_size=400",
        "data.preprocessing_workers=0",
        f"hydra.run.dir={cache / 'run'}",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, *cmd],
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(cache.rglob("train/split.json")), "shards were written"
    return int(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_preprocessing_peak_memory_grows_less_than_1_5x_for_a_10x_corpus(tmp_path):
    small = write_text_corpus(tmp_path / "small.txt", documents=2_000, seed=1)
    large = write_text_corpus(tmp_path / "large.txt", documents=20_000, seed=1)
    peak_small = _peak_prepare(small, tmp_path / "cache-small")
    peak_large = _peak_prepare(large, tmp_path / "cache-large")
    print(
        f"corpus {small.stat().st_size / 2**20:.1f} MiB -> peak {peak_small / 2**20:.0f} MiB; "
        f"{large.stat().st_size / 2**20:.1f} MiB -> {peak_large / 2**20:.0f} MiB"
    )
    assert peak_large <= 1.5 * peak_small
