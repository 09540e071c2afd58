"""``clozelab bench`` sections (``bench.sections``; the command is ``command.py``): our
pre-training step side by side with HF transformers (DESIGN §7), and where the other sections live.

- ``pretrain``: one process, same threads, same weights, same batches (real ``Collator`` +
  ``TokenMasking``), same AdamW with gradient clipping. Times our step (``PretrainModule``:
  embed -> encode -> MLM on the predicted positions + NSP) and ``transformers.BertForPreTraining``
  in alternating rounds, in fp32 and under bf16 autocast. Also: the loss of both models at equal
  weights (dropout off), MFU against a measured matmul peak, and the share of step time the data
  pipeline (collate + corruption, as one DataLoader worker does it) would take.
  ``bench.pretrain.attention_backend`` / ``unpad`` / ``unpad_attention`` / ``compile`` set our
  encoder's GPU-path options (``conf/encoder``, ``model.compile``).
- ``unpad``: padded batches (row lengths uniform in [``bench.unpad.min_length``, seq_len]): our
  step with ``encoder.unpad`` off and on (same weights, same batches, alternating rounds), the
  loss of both at equal weights, and HF on the same batches.
- ``plm``: XLNet permutation LM, our step against HF ``XLNetLMHeadModel`` at the
  ``bench.pretrain`` sizes (``clozelab.bench.plm``).
- ``corruption``: ``clozelab.corruption.bench.bench_corruptions`` when that module exists.
- ``seq2seq``: our T5 encoder-decoder step beside HF ``T5ForConditionalGeneration`` (same weights,
  span-corrupted batches, AdamW): ``clozelab.bench.seq2seq``.
- ``knowledge``: ERNIE-THU's fusion overhead per step beside the plain encoder at the
  ``bench.pretrain`` sizes, and the entity pipeline's MB/s beside plain preprocessing
  (``clozelab.bench.knowledge``).

``bench.device`` (cpu | cuda) runs the model sections on that device (autocast there, timings
synchronised).
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from clozelab.core.errors import config_error
from clozelab.training.timing import check_precisions as _check_precisions
from clozelab.training.timing import eval_losses, module_loss, time_models
from clozelab.training.timing import sync as _sync
from clozelab.training.timing import synthetic_instances as _instances
from clozelab.training.timing import to_device as _to_device

log = logging.getLogger(__name__)


def matmul_peak_gflops(
    size: int = 2048, repeats: int = 5, dtype=torch.float32, device: str | torch.device = "cpu"
) -> float:
    """Measured GFLOP/s of a ``size`` x ``size`` matmul (best of ``repeats``)."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # warm-up
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def step_flops(
    L: int, H: int, intermediate: int, V: int, B: int, T: int, predicted: float
) -> float:
    """Model FLOPs of one training step (forward x 3): encoder on every position, the MLM
    decoder on the predicted positions only, NSP on [CLS]."""
    per_token_layer = 2 * (4 * H * H + 2 * H * intermediate) + 4 * T * H  # dense + attention
    forward = B * T * L * per_token_layer + predicted * 2 * (H * H + H * V) + B * 2 * (H * H)
    return 3.0 * forward


# ---------------------------------------------------------------------------- batches
def make_batches(p: DictConfig, n: int, seed: int, min_length: int | None = None):
    """``n`` corrupted batches and the seconds one took to collate + corrupt."""
    from clozelab.corruption.mask import TokenMasking
    from clozelab.data.collate import Collator

    rng = np.random.default_rng(seed)
    corruption = TokenMasking(
        p.mask_rate, vocab_size=p.vocab_size, mask_token_id=4, special_token_ids=[0, 1, 2, 3, 4]
    )
    collate = Collator(pad_id=0, corruption=corruption, seed=seed)
    groups = [
        _instances(p.batch_size, p.seq_len, p.vocab_size, p.short_fraction, rng, min_length)
        for _ in range(n)
    ]
    collate(groups[0])  # warm-up
    start = time.perf_counter()
    batches = [collate(g) for g in groups]
    return batches, (time.perf_counter() - start) / n


# ---------------------------------------------------------------------------- models
def encoder_options(p: DictConfig, **overrides) -> dict[str, Any]:
    """Our encoder's GPU-path options from ``bench.pretrain`` (and ``overrides``)."""
    options = {
        "attention_backend": p.get("attention_backend", "auto"),
        "unpad": bool(p.get("unpad", False)),
        "unpad_attention": p.get("unpad_attention", "padded"),
    }
    options.update(overrides)
    return options


def build_ours(p: DictConfig, **encoder_kw):
    """Our PretrainModule (BERT embedding, post-LN encoder, MLM + NSP); seeded, so two calls
    give the same weights. ``bench.pretrain.compile`` compiles it in place."""
    from clozelab.model.compile import apply_model_compile
    from clozelab.model.embeddings import BertEmbeddings
    from clozelab.model.encoder import TransformerEncoder
    from clozelab.objectives.mlm import MLM
    from clozelab.objectives.nsp import NSP
    from clozelab.training.module import PretrainModule

    torch.manual_seed(0)
    H, V = p.hidden_size, p.vocab_size
    embedding = BertEmbeddings(V, H, max_position_embeddings=max(512, p.seq_len))
    encoder = TransformerEncoder(
        H, p.num_layers, p.num_heads, p.intermediate_size, **encoder_options(p, **encoder_kw)
    )
    ours = PretrainModule(embedding, encoder, {"mlm": MLM(H, V), "nsp": NSP(H)}, optimizer=None)
    apply_model_compile(embedding, encoder, p)  # bench.pretrain.compile*, as model.compile*
    return ours


def build_hf(p: DictConfig, ours):
    """An HF BertForPreTraining holding ``ours``' weights."""
    import transformers

    from clozelab.model.hf import to_hf_state_dict

    H, V = p.hidden_size, p.vocab_size
    config = transformers.BertConfig(
        vocab_size=V,
        hidden_size=H,
        num_hidden_layers=p.num_layers,
        num_attention_heads=p.num_heads,
        intermediate_size=p.intermediate_size,
        max_position_embeddings=max(512, p.seq_len),
        hidden_act="gelu",
    )
    config._attn_implementation = p.hf_attention
    hf = transformers.BertForPreTraining(config)
    state = to_hf_state_dict(
        ours.embedding, ours.encoder, ours.objectives["mlm"], ours.objectives["nsp"]
    )
    hf.load_state_dict(state, strict=True)
    return hf


def build_pair(p: DictConfig):
    """Our PretrainModule and an HF BertForPreTraining holding the same weights."""
    ours = build_ours(p)
    return ours, build_hf(p, ours)


def _hf_loss(model, batch):
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        labels=batch["mlm_labels"],
        next_sentence_label=batch["next_sentence_label"],
    ).loss


def bench_pretrain(p: DictConfig, peaks: dict[str, float], device="cpu") -> dict[str, Any]:
    _check_precisions("bench.pretrain.precisions", p.precisions)
    device = torch.device(device)
    ours, hf = (m.to(device) for m in build_pair(p))
    batches, data_s = make_batches(p, p.batches, seed=0)
    tokens = float(np.mean([int(b["attention_mask"].sum()) for b in batches]))
    predicted = float(np.mean([int((b["mlm_labels"] != -100).sum()) for b in batches]))
    batches = _to_device(batches, device)
    out: dict[str, Any] = {"pretrain.tokens_per_batch": tokens}

    a, b = eval_losses({"ours": (ours, module_loss), "hf": (hf, _hf_loss)}, batches[0]).values()
    out.update(
        {"pretrain.clozelab_loss": a, "pretrain.hf_loss": b, "pretrain.loss_abs_diff": abs(a - b)}
    )

    flops = step_flops(
        p.num_layers,
        p.hidden_size,
        p.intermediate_size,
        p.vocab_size,
        p.batch_size,
        int(batches[0]["input_ids"].shape[1]),
        predicted,
    )
    models = {"clozelab": (ours, module_loss)}
    if p.hf:
        models["hf"] = (hf, _hf_loss)
    for precision in p.precisions:
        suffix = "" if precision == "fp32" else f"_{precision}"
        graphs: dict = {}
        for name, step_s in time_models(models, batches, p, precision, graphs).items():
            out[f"pretrain.{name}_step_s{suffix}"] = step_s
            out[f"pretrain.{name}_tokens_per_s{suffix}"] = tokens / step_s
            out[f"pretrain.{name}_mfu{suffix}"] = flops / step_s / (peaks[precision] * 1e9)
        if p.get("compile", False):  # graphs traced in warm-up, and recompiles while timing
            out[f"pretrain.compiled_graphs{suffix}"] = graphs["warmup"]
            out[f"pretrain.recompiles_while_timing{suffix}"] = graphs["timing"]
    for precision in p.precisions:
        suffix = "" if precision == "fp32" else f"_{precision}"
        if p.hf:  # ratios against HF in fp32 (its default), and against HF in the same precision
            ours_tps = out[f"pretrain.clozelab_tokens_per_s{suffix}"]
            if "fp32" in p.precisions:
                out[f"pretrain.ratio{suffix}"] = ours_tps / out["pretrain.hf_tokens_per_s"]
            if suffix:
                out[f"pretrain.ratio{suffix}_vs_hf{suffix}"] = (
                    ours_tps / out[f"pretrain.hf_tokens_per_s{suffix}"]
                )
    if "fp32" in p.precisions:
        step = out["pretrain.clozelab_step_s"]
        out["pretrain.data_s_per_batch"] = data_s
        out["pretrain.data_share"] = data_s / (data_s + step)
    out["pretrain.step_flops"] = flops
    return out


# ---------------------------------------------------------------------------- unpad
def bench_unpad(p: DictConfig, u: DictConfig, device="cpu") -> dict[str, Any]:
    """Our step on padded batches with ``encoder.unpad`` off and on, side by side (and HF).

    Keys: ``unpad.real_token_fraction``, ``unpad.<name>_tokens_per_s[_bf16]`` for ``padded``
    (unpad off), ``unpad`` (on, attention on the padded layout), ``unpad_nested`` (on, nested
    attention) and ``hf``; ``unpad.ratio[_nested][_bf16]`` (unpadded / padded),
    ``unpad.ratio_vs_hf[_bf16]``; ``unpad.loss_abs_diff`` (unpadded vs padded loss at equal
    weights, dropout off)."""
    _check_precisions("bench.unpad.precisions", u.precisions)
    for layout in u.layouts:
        if layout not in ("padded", "nested"):
            raise config_error(
                "bench.unpad.layouts",
                layout,
                "unknown attention layout",
                "use a list of [padded, nested]",
            )
    device = torch.device(device)
    models = {"padded": (build_ours(p, unpad=False).to(device), module_loss)}
    for layout in u.layouts:
        name = "unpad" if layout == "padded" else f"unpad_{layout}"
        models[name] = (build_ours(p, unpad=True, unpad_attention=layout).to(device), module_loss)
    if u.hf:
        models["hf"] = (build_hf(p, models["padded"][0]).to(device), _hf_loss)
    batches, _ = make_batches(p, p.batches, seed=1, min_length=u.min_length)
    real = float(np.mean([float(b["attention_mask"].float().mean()) for b in batches]))
    tokens = float(np.mean([int(b["attention_mask"].sum()) for b in batches]))
    batches = _to_device(batches, device)
    out: dict[str, Any] = {"unpad.min_length": int(u.min_length), "unpad.real_token_fraction": real}
    losses = eval_losses(models, batches[0])
    out["unpad.loss_abs_diff"] = max(
        abs(v - losses["padded"]) for k, v in losses.items() if k.startswith("unpad")
    )
    for precision in u.precisions:
        suffix = "" if precision == "fp32" else f"_{precision}"
        for name, step_s in time_models(models, batches, p, precision).items():
            out[f"unpad.{name}_tokens_per_s{suffix}"] = tokens / step_s
        base = out[f"unpad.padded_tokens_per_s{suffix}"]
        for name in models:
            if name.startswith("unpad"):
                tail = name[len("unpad") :]
                out[f"unpad.ratio{tail}{suffix}"] = out[f"unpad.{name}_tokens_per_s{suffix}"] / base
        if u.hf and "unpad" in models:
            out[f"unpad.ratio_vs_hf{suffix}"] = (
                out[f"unpad.unpad_tokens_per_s{suffix}"] / out[f"unpad.hf_tokens_per_s{suffix}"]
            )
    return out


# ---------------------------------------------------------------------------- corruption
def bench_corruption(c: DictConfig) -> dict[str, Any]:
    try:
        module = importlib.import_module("clozelab.corruption.bench")
    except ModuleNotFoundError:
        log.warning("bench: clozelab.corruption.bench is not available; corruption skipped")
        return {"corruption.available": False}
    kwargs = OmegaConf.to_container(c, resolve=True)
    presets = kwargs.pop("presets")
    results = module.bench_corruptions(presets, **kwargs)
    return {"corruption.available": True, **results}


# ---------------------------------------------------------------------------- command
