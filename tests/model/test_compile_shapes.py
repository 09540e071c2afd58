"""``data.pad_to_multiple_of=max_seq_length`` gives every batch one shape, so a model compiled with
``model.compile`` (``compile_dynamic=false``) traces once and never recompiles per batch shape;
the default rounding to 8 gives several widths (and a recompile for each), which the same count
shows."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo import register_backend

from clozelab.core.errors import ClozelabError
from clozelab.data.datamodule import PretrainDataModule
from clozelab.data.preprocess import prepare
from clozelab.model.compile import compile_components
from clozelab.training.components import build_components
from clozelab.training.module import PretrainModule
from clozelab.training.validate import validate_pretrain

GRAPHS: list[int] = []


@register_backend
def clozelab_counting_eager(gm, example_inputs):
    """An eager torch.compile backend that counts the graphs it is handed (one per (re)compile)."""
    GRAPHS.append(len(example_inputs))
    return gm.forward


def _batches(compose_pretrain, cache_dir, pad_to: int, n: int = 6):
    cfg = compose_pretrain("data.instances=segment_pair", "data.short_seq_prob=1.0",
                           "objective=[mlm]")  # fmt: skip
    prepared = prepare(cfg.data, cfg.tokenizer, cache_dir)
    parts = build_components(cfg, prepared.tokenizer)
    data = PretrainDataModule(prepared, parts[3], instances="segment_pair", batch_size=4,
                              max_seq_length=64, short_seq_prob=1.0, seed=1,
                              pad_to_multiple_of=pad_to)  # fmt: skip
    loader = data._loader("train", 0, shuffle=True)
    batches = [batch for _, batch in zip(range(n), loader)]
    return cfg, parts, batches


def _graphs_per_step(parts, batches) -> list[int]:
    embedding, encoder, objectives, _ = parts
    module = PretrainModule(embedding, encoder, objectives, optimizer=None)
    compile_components(embedding, encoder, dynamic=False, backend="clozelab_counting_eager")
    torch._dynamo.reset()
    GRAPHS.clear()
    counts = []
    for batch in batches:
        loss = module(batch)[0]
        loss.backward()
        counts.append(len(GRAPHS))
    return counts


def test_padding_to_max_seq_length_compiles_once(compose_pretrain, cache_dir):
    _, parts, batches = _batches(compose_pretrain, cache_dir, pad_to=64)
    assert {tuple(b["input_ids"].shape) for b in batches} == {(4, 64)}
    counts = _graphs_per_step(parts, batches)
    assert counts[0] > 0 and counts[-1] == counts[0], counts  # no recompile after the first step


def test_rounding_to_8_gives_several_shapes_and_recompiles(compose_pretrain, cache_dir):
    _, parts, batches = _batches(compose_pretrain, cache_dir, pad_to=8)
    widths = {b["input_ids"].shape[1] for b in batches}
    assert len(widths) > 1 and all(w % 8 == 0 for w in widths)
    counts = _graphs_per_step(parts, batches)
    assert counts[-1] > counts[0], counts


def test_pad_to_multiple_of_is_checked(compose_pretrain):
    with pytest.raises(ClozelabError, match="data.pad_to_multiple_of"):
        validate_pretrain(compose_pretrain("data.pad_to_multiple_of=0"))
