"""``clozelab bench`` section ``knowledge``: what ERNIE-THU's knowledge costs (SPECS §19).

- Fusion overhead per step: at the ``bench.pretrain`` sizes, the same batches (the real
  ``Collator`` with ``corruption=ernie_thu``'s token masking + dEA alignment noise, one entity
  alignment every ``mention_every`` tokens) train our plain post-LN encoder (MLM + NSP) beside the
  knowledgeable encoder with the same number of layers (``knowledge_layers`` of them aggregators)
  with MLM + NSP, and with MLM + NSP + dEA, in alternating rounds.
- Entity pipeline speed: the corpus prepared twice (same tokenizer), without and with
  ``data.entity_links``, in MB of text per second; then TransE seconds per epoch on its graph.

Keys: ``knowledge.{plain,fusion,fusion_dea}_tokens_per_s[_bf16]``,
``knowledge.fusion_step_ratio[_bf16]`` and ``knowledge.fusion_dea_step_ratio[_bf16]`` (step time /
the plain step's), ``knowledge.prepare_mb_per_s``, ``knowledge.prepare_links_mb_per_s``,
``knowledge.prepare_links_ratio``, ``knowledge.entities``, ``knowledge.triples``,
``knowledge.transe_s_per_epoch``.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from clozelab.training.timing import check_precisions, synthetic_instances, time_models, to_device


def make_knowledge_batches(p: DictConfig, k: DictConfig, n: int, seed: int) -> list[dict]:
    """``n`` batches with entity alignments, corrupted as ``corruption=ernie_thu``."""
    from clozelab.corruption.compose import Compose
    from clozelab.corruption.entity_alignment import EntityAlignmentNoise
    from clozelab.corruption.mask import TokenMasking
    from clozelab.data.collate import Collator

    rng = np.random.default_rng(seed)
    ids = {"vocab_size": p.vocab_size, "mask_token_id": 4, "special_token_ids": [0, 1, 2, 3, 4]}
    steps = [TokenMasking(p.mask_rate, **ids), EntityAlignmentNoise(num_entities=k.num_entities)]
    collate = Collator(pad_id=0, corruption=Compose(steps, **ids), seed=seed)
    batches = []
    for _ in range(n):
        items = synthetic_instances(p.batch_size, p.seq_len, p.vocab_size, p.short_fraction, rng)
        for item in items:
            links = np.full(len(item["input_ids"]), -1, dtype=np.int64)
            at = rng.random(len(links)) < 1.0 / k.mention_every
            at &= item["special_tokens_mask"] == 0
            links[at] = rng.integers(k.num_entities, size=int(at.sum()))
            item["entity_links"] = links
        batches.append(collate(items))
    return batches


def build_knowledge_models(p: DictConfig, k: DictConfig) -> dict[str, Any]:
    """The plain module and the knowledgeable ones (same embedding, sizes and seed)."""
    from clozelab.bench.pretrain import build_ours
    from clozelab.model.knowledge import KnowledgeEncoder
    from clozelab.objectives.dea import DenoisingEntityAutoencoder
    from clozelab.objectives.mlm import MLM
    from clozelab.objectives.nsp import NSP
    from clozelab.training.module import PretrainModule

    models = {"plain": build_ours(p)}
    for name, dea in (("fusion", False), ("fusion_dea", True)):
        torch.manual_seed(0)
        H, V = p.hidden_size, p.vocab_size
        plain = build_ours(p)
        encoder = KnowledgeEncoder(
            H, p.num_layers, p.num_heads, p.intermediate_size, k.knowledge_layers,
            entity_dim=k.entity_dim, num_entities=k.num_entities,
        )  # fmt: skip
        objectives = {"mlm": MLM(H, V), "nsp": NSP(H)}
        if dea:
            objectives["dea"] = DenoisingEntityAutoencoder(H, k.entity_dim)
        models[name] = PretrainModule(plain.embedding, encoder, objectives, optimizer=None)
    return models


def _loss(model, batch):
    return model(batch)[0]


def bench_fusion(p: DictConfig, k: DictConfig, device="cpu") -> dict[str, Any]:
    check_precisions("bench.knowledge.precisions", k.precisions)
    device = torch.device(device)
    batches = make_knowledge_batches(p, k, p.batches, seed=2)
    tokens = float(np.mean([int(b["attention_mask"].sum()) for b in batches]))
    aligned = float(np.mean([int((b["entity_labels"] >= 0).sum()) for b in batches]))
    batches = to_device(batches, device)
    models = {name: (m.to(device), _loss) for name, m in build_knowledge_models(p, k).items()}
    out: dict[str, Any] = {
        "knowledge.config": f"{k.knowledge_layers} of {p.num_layers} layers aggregators, entity "
        f"dim {k.entity_dim}, {k.num_entities} entities, {aligned:.0f} alignments per batch"
    }
    for precision in k.precisions:
        suffix = "" if precision == "fp32" else f"_{precision}"
        seconds = time_models(models, batches, p, precision)
        for name, step_s in seconds.items():
            out[f"knowledge.{name}_tokens_per_s{suffix}"] = tokens / step_s
        for name in ("fusion", "fusion_dea"):
            out[f"knowledge.{name}_step_ratio{suffix}"] = seconds[name] / seconds["plain"]
    return out


def bench_entity_pipeline(k: DictConfig) -> dict[str, Any]:
    """Prepare ``k.corpus`` without and with entity links (one tokenizer), then TransE."""
    from pathlib import Path

    from clozelab.data.preprocess import get_tokenizer, prepare
    from clozelab.data.transe import TransESettings

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="clozelab-bench-") as cache:
        base = {"corpus": k.corpus, "max_documents": k.max_documents, "validation_fraction": 0.0,
                "preprocessing_workers": k.preprocessing_workers}  # fmt: skip
        tokenizer = OmegaConf.create({"vocab_size": k.vocab_size})
        get_tokenizer(tokenizer, k.corpus, Path(cache), k.max_documents)  # once, untimed
        for key, links in (("prepare", False), ("prepare_links", True)):
            prepared = prepare(OmegaConf.create({**base, "entity_links": links}), tokenizer, cache)
            out[f"knowledge.{key}_mb_per_s"] = prepared.stats["mb_per_s"]
        out["knowledge.prepare_text_mb"] = prepared.stats["text_mb"]
        out["knowledge.prepare_links_ratio"] = (
            out["knowledge.prepare_links_mb_per_s"] / out["knowledge.prepare_mb_per_s"]
        )
        graph = prepared.corpus_stats.knowledge()
        out["knowledge.entities"] = graph.num_entities
        out["knowledge.triples"] = len(graph.triples)
        if k.transe_epochs:
            from clozelab.data.transe import train_transe

            start = time.perf_counter()
            settings = TransESettings(dim=k.entity_dim, epochs=k.transe_epochs)
            train_transe(graph.triples, graph.num_entities, len(graph.relations), settings)
            out["knowledge.transe_s_per_epoch"] = (time.perf_counter() - start) / k.transe_epochs
    return out


def bench_knowledge(p: DictConfig, k: DictConfig, device="cpu") -> dict[str, Any]:
    out = bench_fusion(p, k, device)
    if k.max_documents != 0:
        out.update(bench_entity_pipeline(k))
    return out
