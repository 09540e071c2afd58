"""``clozelab bench`` section ``seq2seq``: our encoder-decoder training step beside HF
``T5ForConditionalGeneration`` (DESIGN §7, issue 18).

One process, same threads, same weights (ours exported with ``clozelab.model.hf_seq2seq``), same
batches (real ``Collator`` + T5 span corruption, ``corruption=t5_span``: raw rows long enough that
the source fills ``seq_len``), same AdamW with gradient clipping, alternating rounds. Ours is the
``PretrainModule`` running T5Embeddings -> T5Encoder -> the seq2seq objective (T5Decoder, loss on
the target tokens only through the chunked tied cross-entropy); HF computes the full [B, L, V]
logits and its cross-entropy. Keys: ``seq2seq.clozelab_loss`` / ``seq2seq.hf_loss`` (equal
weights, dropout off), ``seq2seq.<name>_tokens_per_s[_bf16]`` (source + target tokens per
second), ``seq2seq.ratio[_bf16]`` (ours / HF fp32) and ``seq2seq.ratio_bf16_vs_hf_bf16``;
from the CPU seconds of this process per step, ``seq2seq.<name>_tokens_per_cpu_s[_bf16]`` and
``seq2seq.ratio_cpu[_bf16]`` (HF CPU time / ours): the work ratio, robust to a loaded machine.
``bench.seq2seq.compile`` compiles our embedding, encoder layers and decoder layers in place
(``model.compile``; HF stays eager) and adds ``seq2seq.compiled_graphs`` /
``seq2seq.recompiles_while_timing``; generation then runs the layers eagerly.

Greedy generation (``generate_length`` > 0; eval mode, the same weights): tokens written per
second by ``clozelab.model.generate.greedy_decode`` with its key/value cache
(``seq2seq.generate_cached_tokens_per_s``) and re-reading the prefix
(``seq2seq.generate_uncached_tokens_per_s``), and by HF ``generate`` (greedy, its cache:
``seq2seq.generate_hf_tokens_per_s``); every row writes exactly ``generate_length`` tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from clozelab.training.timing import (
    check_precisions,
    eval_losses,
    module_loss,
    time_models,
    to_device,
)

SPECIAL = [0, 1, 2, 3, 4]  # [PAD] [UNK] [CLS] [SEP] [MASK] of the synthetic vocabulary


def make_seq2seq_batches(s: DictConfig, n: int, seed: int):
    """``n`` span-corrupted batches (the source fills ``seq_len``) and the corruption."""
    from clozelab.corruption.t5 import T5Noise
    from clozelab.data.collate import Collator

    corruption = T5Noise(
        density=s.noise_density,
        mean_span=s.mean_span,
        n_sentinels=s.n_sentinels,
        vocab_size=s.vocab_size,
        mask_token_id=4,
        special_token_ids=SPECIAL,
        pad_token_id=0,
        eos_token_id=3,
    )
    length = corruption.instance_length(s.seq_len, 2)
    rng = np.random.default_rng(seed)
    collate = Collator(pad_id=0, corruption=corruption, seed=seed)
    batches = []
    for b in range(n):
        items = []
        for i in range(s.batch_size):
            ids = rng.integers(5, s.vocab_size, length)
            ids[0], ids[-1] = 2, 3
            special = np.zeros(length, dtype=np.int64)
            special[[0, -1]] = 1
            items.append(
                {
                    "input_ids": ids,
                    "token_type_ids": np.zeros(length, dtype=np.int64),
                    "special_tokens_mask": special,
                    "index": b * s.batch_size + i,
                }
            )
        batches.append(collate(items))
    return batches, corruption.extra_vocab


def build_seq2seq_pair(s: DictConfig, vocab: int):
    """Our T5 PretrainModule and an HF T5ForConditionalGeneration with the same weights."""
    import transformers

    from clozelab.model.hf_seq2seq import hf_config_dict, to_hf_state_dict
    from clozelab.model.t5 import T5Decoder, T5Embeddings, T5Encoder
    from clozelab.objectives.seq2seq import Seq2Seq
    from clozelab.training.module import PretrainModule

    torch.manual_seed(0)
    sizes = (s.hidden_size, s.num_layers, s.num_heads, s.intermediate_size)
    embedding = T5Embeddings(vocab, s.hidden_size)
    encoder, decoder = T5Encoder(*sizes), T5Decoder(*sizes)
    ours = PretrainModule(embedding, encoder, {"seq2seq": Seq2Seq(decoder)}, optimizer=None)
    config = transformers.T5Config(**hf_config_dict(embedding, encoder, decoder, 0, 3))
    config._attn_implementation = s.hf_attention
    hf = transformers.T5ForConditionalGeneration(config)
    hf.load_state_dict(to_hf_state_dict(embedding, encoder, decoder), strict=True)
    from clozelab.model.compile import apply_model_compile

    apply_model_compile(embedding, encoder, s, ours.objectives)  # ours only: HF runs as users do
    return ours, hf


def _hf_loss(model, batch):
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=batch["decoder_input_ids"],
        decoder_attention_mask=batch["decoder_attention_mask"],
        labels=batch["labels"],
    ).loss


def _generate_rates(ours, hf, batch, length: int, repeats: int) -> dict[str, float]:
    """Generated tokens per second: ours with and without the cache, HF greedy ``generate``."""
    import time

    from clozelab.model.generate import greedy_decode

    ids, mask = batch["input_ids"], batch["attention_mask"]
    decoder = ours.objectives["seq2seq"].decoder
    args = (ours.embedding, ours.encoder, decoder, ids, mask, 0, -1, 0)  # eos -1: never written

    def ours_run(cache: bool):
        return greedy_decode(*args, max_length=length, use_cache=cache)

    def hf_run():
        return hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=length,
            min_new_tokens=length,
            do_sample=False,
            num_beams=1,
        )

    calls = {"cached": lambda: ours_run(True), "uncached": lambda: ours_run(False)}
    # compiled layers run eagerly here: one graph per decoding length would time compilation
    eager = torch.compiler.set_stance("force_eager")
    if hf is not None:
        calls["hf"] = hf_run
    out = {}
    for model in (ours, hf):
        if model is not None:
            model.eval()
    with torch.no_grad(), eager:
        for name, call in calls.items():
            call()  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                call()
            seconds = (time.perf_counter() - start) / repeats
            out[f"seq2seq.generate_{name}_tokens_per_s"] = ids.shape[0] * length / seconds
    for model in (ours, hf):
        if model is not None:
            model.train()
    return out


def bench_seq2seq(s: DictConfig, device="cpu") -> dict[str, Any]:
    """Tokens per second of both training steps (and the ratio), losses at equal weights."""
    check_precisions("bench.seq2seq.precisions", s.precisions)
    device = torch.device(device)
    batches, extra = make_seq2seq_batches(s, s.batches, seed=0)
    ours, hf = (m.to(device) for m in build_seq2seq_pair(s, s.vocab_size + extra))
    source = float(np.mean([int(b["attention_mask"].sum()) for b in batches]))
    target = float(np.mean([int((b["labels"] != -100).sum()) for b in batches]))
    batches = to_device(batches, device)
    out: dict[str, Any] = {
        "seq2seq.config": (
            f"T5 L{s.num_layers}+{s.num_layers}/H{s.hidden_size}/A{s.num_heads}/"
            f"I{s.intermediate_size} V{s.vocab_size}+{extra} seq{s.seq_len} "
            f"batch{s.batch_size} t5_span"
        ),
        "seq2seq.source_tokens_per_batch": source,
        "seq2seq.target_tokens_per_batch": target,
    }
    models = {"clozelab": (ours, module_loss), "hf": (hf, _hf_loss)}
    a, b = eval_losses(models, batches[0]).values()
    out.update(
        {"seq2seq.clozelab_loss": a, "seq2seq.hf_loss": b, "seq2seq.loss_abs_diff": abs(a - b)}
    )
    if not s.hf:
        models.pop("hf")
    tokens = source + target
    for precision in s.precisions:
        suffix = "" if precision == "fp32" else f"_{precision}"
        cpu: dict = {}
        graphs: dict = {}
        for name, step_s in time_models(models, batches, s, precision, graphs, cpu).items():
            out[f"seq2seq.{name}_step_s{suffix}"] = step_s
            out[f"seq2seq.{name}_tokens_per_s{suffix}"] = tokens / step_s
            out[f"seq2seq.{name}_tokens_per_cpu_s{suffix}"] = tokens / max(cpu[name], 1e-9)
        if "hf" in cpu:  # the work done per step, robust to other processes' load
            out[f"seq2seq.ratio_cpu{suffix}"] = cpu["hf"] / max(cpu["clozelab"], 1e-9)
        if s.get("compile", False):  # graphs traced in warm-up, and recompiles while timing
            out[f"seq2seq.compiled_graphs{suffix}"] = graphs["warmup"]
            out[f"seq2seq.recompiles_while_timing{suffix}"] = graphs["timing"]
    length = int(s.get("generate_length", 0))
    if length > 0:
        out["seq2seq.generate_config"] = f"greedy, batch {s.batch_size}, {length} tokens a row"
        out.update(
            _generate_rates(
                ours, hf if s.hf else None, batches[0], length, int(s.get("generate_repeats", 2))
            )
        )
    if s.hf:
        for precision in s.precisions:
            suffix = "" if precision == "fp32" else f"_{precision}"
            ours_tps = out[f"seq2seq.clozelab_tokens_per_s{suffix}"]
            if "fp32" in s.precisions:
                out[f"seq2seq.ratio{suffix}"] = ours_tps / out["seq2seq.hf_tokens_per_s"]
            if suffix:
                out[f"seq2seq.ratio{suffix}_vs_hf{suffix}"] = (
                    ours_tps / out[f"seq2seq.hf_tokens_per_s{suffix}"]
                )
    return out


__all__ = ["bench_seq2seq", "build_seq2seq_pair", "make_seq2seq_batches"]
