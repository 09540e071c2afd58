"""``clozelab bench`` section ``plm``: our XLNet pre-training step against HF ``XLNetLMHeadModel``.

Same sizes as ``bench.pretrain`` (L/H/A/I, vocabulary, sequence length, batch), the same weights
(ours exported into HF with ``clozelab.model.hf_xlnet``), the same batches (the real ``Collator``
with ``PermutationTargets``: ``perm_mask``, ``target_mapping``, ``plm_labels``), the same AdamW
with gradient clipping, timed in alternating rounds. Also the loss of both at equal weights
(dropout off) and the collate + permutation-target time per batch.

Keys: ``plm.clozelab_tokens_per_s[_bf16]``, ``plm.hf_tokens_per_s[_bf16]``, ``plm.ratio[_bf16]``
(ours / HF in the same precision; on the CPU also ``..._tokens_per_cpu_s`` and ``plm.ratio_cpu``,
by this process's CPU time: the measure that holds on a loaded machine), ``plm.clozelab_loss``,
``plm.hf_loss``, ``plm.loss_abs_diff``, ``plm.predicted_per_batch``, ``plm.data_s_per_batch``.
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
    synthetic_instances,
    time_models,
    to_device,
)


def make_plm_batches(p: DictConfig, k: int, n: int, seed: int):
    """``n`` collated batches with XLNet's permutation targets, and the seconds one took."""
    import time

    from clozelab.corruption.permutation import PermutationTargets
    from clozelab.data.collate import Collator

    rng = np.random.default_rng(seed)
    collate = Collator(pad_id=0, corruption=PermutationTargets(k=k), seed=seed)
    groups = [
        synthetic_instances(p.batch_size, p.seq_len, p.vocab_size, p.short_fraction, rng)
        for _ in range(n)
    ]
    collate(groups[0])  # warm-up
    start = time.perf_counter()
    batches = [collate(g) for g in groups]
    return batches, (time.perf_counter() - start) / n


def build_plm_pair(p: DictConfig, dropout: float = 0.1):
    """Our PretrainModule (word embedding, XLNet encoder, PLM) and an HF XLNetLMHeadModel with
    the same weights."""
    import transformers

    from clozelab.model.char_cnn import WordEmbeddings
    from clozelab.model.hf_xlnet import to_hf_xlnet_state_dict, xlnet_config_dict
    from clozelab.model.xlnet import XLNetEncoder
    from clozelab.objectives.plm import PermutationLM
    from clozelab.training.module import PretrainModule

    torch.manual_seed(0)
    H, V = p.hidden_size, p.vocab_size
    embedding = WordEmbeddings(V, H, dropout=dropout, pad_token_id=None)
    encoder = XLNetEncoder(H, p.num_layers, p.num_heads, p.intermediate_size, dropout=dropout)
    plm = PermutationLM(V)
    ours = PretrainModule(embedding, encoder, {"plm": plm}, optimizer=None)
    config = transformers.XLNetConfig(**xlnet_config_dict(embedding, encoder))
    hf = transformers.XLNetLMHeadModel(config)
    hf.load_state_dict(to_hf_xlnet_state_dict(embedding, encoder, plm.bias), strict=True)
    return ours, hf


def hf_plm_output(model, batch, **kwargs):
    """An HF ``XLNetLMHeadModel`` on one of our PLM batches (``kwargs``: e.g. ``labels``)."""
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        perm_mask=batch["perm_mask"].float(),
        target_mapping=batch["target_mapping"],
        **kwargs,
    )


def _hf_loss(model, batch):
    return hf_plm_output(model, batch, labels=batch["plm_labels"]).loss


def bench_plm(p: DictConfig, c: DictConfig, device="cpu") -> dict[str, Any]:
    """The ``plm`` section: ``p`` is ``bench.pretrain`` (sizes, steps, rounds), ``c`` is
    ``bench.plm`` (``k``, ``precisions``, ``hf``)."""
    check_precisions("bench.plm.precisions", c.precisions)
    device = torch.device(device)
    ours, hf = (m.to(device) for m in build_plm_pair(p))
    batches, data_s = make_plm_batches(p, int(c.k), p.batches, seed=0)
    tokens = float(np.mean([int(b["attention_mask"].sum()) for b in batches]))
    predicted = float(np.mean([int((b["plm_labels"] != -100).sum()) for b in batches]))
    batches = to_device(batches, device)
    models = {"clozelab": (ours, module_loss), "hf": (hf, _hf_loss)}
    losses = eval_losses(models, batches[0])
    out: dict[str, Any] = {
        "plm.config": f"L{p.num_layers}/H{p.hidden_size}/A{p.num_heads}/I{p.intermediate_size} "
        f"V{p.vocab_size} seq{p.seq_len} batch{p.batch_size} K{c.k}",
        "plm.tokens_per_batch": tokens,
        "plm.predicted_per_batch": predicted,
        "plm.clozelab_loss": losses["clozelab"],
        "plm.hf_loss": losses["hf"],
        "plm.loss_abs_diff": abs(losses["clozelab"] - losses["hf"]),
        "plm.data_s_per_batch": data_s,
    }
    if not c.hf:
        del models["hf"]
    for precision in c.precisions:
        suffix = "" if precision == "fp32" else f"_{precision}"
        cpu: dict[str, float] = {}
        for name, step_s in time_models(models, batches, p, precision, cpu=cpu).items():
            out[f"plm.{name}_tokens_per_s{suffix}"] = tokens / step_s
            if device.type == "cpu":
                out[f"plm.{name}_tokens_per_cpu_s{suffix}"] = tokens / cpu[name]
        if c.hf:
            out[f"plm.ratio{suffix}"] = (
                out[f"plm.clozelab_tokens_per_s{suffix}"] / out[f"plm.hf_tokens_per_s{suffix}"]
            )
            if device.type == "cpu":
                out[f"plm.ratio_cpu{suffix}"] = cpu["hf"] / cpu["clozelab"]
    return out
