"""``clozelab prepare``: tokenizer + cached shards, without training."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from clozelab.data.preprocess import prepare as prepare_data
from clozelab.training.validate import validate_data

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig) -> dict:
    validate_data(cfg)
    prepared = prepare_data(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)
    summary = {"directory": str(prepared.directory), "reused": prepared.reused, **prepared.stats}
    log.info("Shards ready at %s", prepared.directory)
    return summary
