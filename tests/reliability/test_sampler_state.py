"""The sampler's resume offset and the train loader's checkpointed position."""

from __future__ import annotations

import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.data.datamodule import ResumableDataLoader
from clozelab.data.sampler import EpochSampler


def test_start_skips_the_consumed_prefix_and_keeps_the_epoch_length():
    full = list(EpochSampler(50, seed=3, epoch=2))
    resumed = EpochSampler(50, seed=3, epoch=2, start=16)
    assert list(resumed) == full[16:]
    assert len(resumed) == 50  # Lightning counts the resumed epoch's batches from where it stopped
    with pytest.raises(ValueError):
        resumed.start = 51


def test_start_per_rank():
    world = [list(EpochSampler(21, 0, 0, rank=r, world_size=2)) for r in range(2)]
    assert len(world[0]) == len(world[1]) == 10 and not set(world[0]) & set(world[1])
    assert list(EpochSampler(21, 0, 0, rank=1, world_size=2, start=4)) == world[1][4:]


def _loader(batch_size=4, epoch=1, done=3):
    loader = ResumableDataLoader(
        list(range(40)), batch_size=batch_size, sampler=EpochSampler(40, 0, epoch), drop_last=True
    )
    loader.epoch, loader.position = epoch, lambda: done
    return loader


def test_loader_state_round_trip_resumes_at_the_next_batch():
    first = _loader()
    expected = [b.tolist() for b in first][3:]
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": 3, "batch_size": 4, "world_size": 1}
    resumed = _loader(done=0)
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == expected
    assert len(resumed) == 10


def test_state_of_another_epoch_is_ignored_and_another_batch_size_refused():
    loader = _loader(epoch=2)
    loader.load_state_dict({"epoch": 1, "batches": 3, "batch_size": 4})
    assert loader.sampler.start == 0
    with pytest.raises(ClozelabError, match="data.batch_size=4.*data.batch_size=8"):
        loader.load_state_dict({"epoch": 2, "batches": 3, "batch_size": 8})


def test_worker_seeds_do_not_draw_from_the_global_rng(compose_pretrain, cache_dir):
    """Building and iterating a train loader leaves the global torch RNG (dropout's) untouched."""
    from clozelab.data.datamodule import PretrainDataModule
    from clozelab.data.preprocess import prepare
    from clozelab.training.components import build_components

    cfg = compose_pretrain()
    prepared = prepare(cfg.data, cfg.tokenizer, cache_dir)
    corruption = build_components(cfg, prepared.tokenizer)[3]
    data = PretrainDataModule(prepared, corruption, batch_size=4, max_seq_length=64, seed=1)
    state = torch.get_rng_state()
    next(iter(data._loader("train", 0, shuffle=True)))
    assert torch.equal(torch.get_rng_state(), state)
