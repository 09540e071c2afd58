"""``clozelab bench``: runs the sections ``bench.sections`` selects (``pretrain``, ``unpad``,
``corruption``: ``pretrain.py``; ``plm``: ``plm.py``; ``seq2seq``: ``seq2seq.py``; ``knowledge``:
``knowledge.py``), writes ``bench.json`` (flat keys, e.g. ``pretrain.ratio``) in the run directory
and prints a table. The sections import nothing from here, so the package has no cycle."""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from clozelab.bench.pretrain import (
    bench_corruption,
    bench_pretrain,
    bench_unpad,
    encoder_options,
    matmul_peak_gflops,
)
from clozelab.core.errors import config_error

log = logging.getLogger(__name__)

SECTIONS = ("pretrain", "unpad", "plm", "corruption", "seq2seq", "knowledge")
DEVICES = ("cpu", "cuda")


def _table(results: dict[str, Any]) -> str:
    width = max(len(k) for k in results)
    lines = []
    for key, value in results.items():
        shown = f"{value:,.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Run the selected sections; write ``bench.json`` in ``paths.output_dir``; return it."""
    b = cfg.bench
    sections = list(b.sections)
    for section in sections:
        if section not in SECTIONS:
            raise config_error(
                "bench.sections", section, "unknown section", f"choose from {list(SECTIONS)}"
            )
    device = b.get("device", "cpu")
    if device not in DEVICES:
        raise config_error("bench.device", device, "unknown device", f"use one of {list(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise config_error(
            "bench.device",
            device,
            "PyTorch sees no CUDA device",
            "run on a GPU with CUDA torch, or use bench.device=cpu",
        )
    if b.threads:
        torch.set_num_threads(int(b.threads))
    results: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
    }
    p = b.pretrain
    if "pretrain" in sections or "unpad" in sections:
        results["pretrain.config"] = (
            f"L{p.num_layers}/H{p.hidden_size}/A{p.num_heads}/I{p.intermediate_size} "
            f"V{p.vocab_size} seq{p.seq_len} batch{p.batch_size} mask{p.mask_rate}"
        )
        options = {**encoder_options(p), "compile": p.get("compile", False)}
        results["pretrain.encoder"] = ", ".join(f"{k}={v}" for k, v in options.items())
    if "pretrain" in sections:
        peaks = {"fp32": matmul_peak_gflops(b.matmul.size, b.matmul.repeats, device=device)}
        if "bf16" in p.precisions:
            peaks["bf16"] = matmul_peak_gflops(
                b.matmul.size, b.matmul.repeats, torch.bfloat16, device
            )
        results.update({f"matmul.{k}_gflops": v for k, v in peaks.items()})
        results.update(bench_pretrain(p, peaks, device))
    if "unpad" in sections:
        results.update(bench_unpad(p, b.unpad, device))
    if "plm" in sections:
        from clozelab.bench.plm import bench_plm

        results.update(bench_plm(p, b.plm, device))
    if "corruption" in sections:
        results.update(bench_corruption(b.corruption))
    if "seq2seq" in sections:
        from clozelab.bench.seq2seq import bench_seq2seq

        results.update(bench_seq2seq(b.seq2seq, device))
    if "knowledge" in sections:
        from clozelab.bench.knowledge import bench_knowledge

        results.update(bench_knowledge(p, b.knowledge, device))
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    print(_table(results))
    log.info("bench.json: %s", run_dir / "bench.json")
    return results
