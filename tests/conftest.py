"""Shared fixtures: offline environment, a generated corpus, composed configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import TINY, write_text_corpus

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["CLOZELAB_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture
def compose_pretrain(tmp_path, cache_dir, text_corpus):
    """Compose the pretrain config for a tiny run on the generated corpus."""
    from hydra import compose, initialize_config_dir

    from clozelab.core.config import conf_dir, register_overlays

    register_overlays()

    def _compose(*overrides: str, name: str = "pretrain", tiny: bool = True, drop=()):
        base = [*TINY, f"data.corpus={text_corpus}"] if tiny else []
        base = [o for o in base if o.split("=")[0] not in drop]
        paths = [f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={cache_dir}"]
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            return compose(name, overrides=[*base, *paths, *overrides])

    return _compose
