"""Every config file in conf/, experiments/ and sweeps/ is composed; components are built."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf, open_dict

from clozelab.core.config import build, conf_dir, overlay_names, resource_dir
from clozelab.training.components import build_components

GROUPS = sorted(p.name for p in conf_dir().iterdir() if p.is_dir() and p.name != "hydra")
#: Options that only build together with another group's choice (the seq2seq objective owns the
#: decoder; a decoder needs the objective that runs it).
COMPANIONS = {("objective", "seq2seq"): ("decoder=t5",),
              **{("decoder", o.stem): ("objective=[seq2seq]",)
                 for o in (conf_dir() / "decoder").glob("*.yaml")}}  # fmt: skip


def _options(group):
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS for o in _options(g)], ids=lambda x: str(x)
)
def test_every_group_option_composes_and_builds(compose_pretrain, group, option):
    from clozelab.data.tokenizer import train_wordpiece

    override = f"{group}=[{option}]" if group == "objective" else f"{group}={option}"
    drop = ("tokenizer.vocab_size",) if group == "tokenizer" else ()
    cfg = compose_pretrain(override, *COMPANIONS.get((group, option), ()), drop=drop)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if group == "model" and option in ("base", "large"):
        with open_dict(cfg):  # keep the test cheap: the sizes are checked, not the init
            cfg.model.vocab_size = 50
        assert build(cfg.encoder, "encoder").layers[0] is not None
        return
    tok = train_wordpiece(["a b c d e f g"] * 5, vocab_size=120)
    _, _, objectives, corruption = build_components(cfg, tok)
    assert set(objectives) == set(cfg.objective)
    assert callable(corruption)


def test_model_sizes_follow_turc_et_al(compose_pretrain):
    expected = {"tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512),
                "base": (12, 768), "large": (24, 1024)}  # fmt: skip
    for name, (layers, hidden) in expected.items():
        cfg = compose_pretrain(f"model={name}", tiny=False)
        assert (cfg.model.num_layers, cfg.model.hidden_size) == (layers, hidden)
        assert cfg.model.hidden_size // cfg.model.num_heads == 64
        assert cfg.model.intermediate_size == 4 * hidden


@pytest.mark.parametrize("name", overlay_names("experiment"))
def test_every_experiment_composes(compose_pretrain, name):
    cfg = compose_pretrain(f"experiment={name}")
    OmegaConf.to_container(cfg, resolve=True)
    head = (resource_dir("experiments") / f"{name}.yaml").read_text().splitlines()
    assert head[0] == "# @package _global_"
    assert any(line.startswith("# Command: clozelab") for line in head), "recipe names its command"


@pytest.mark.parametrize("name", overlay_names("sweep"))
def test_every_sweep_composes_as_multirun(name, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.types import RunMode

    from clozelab.core.config import register_overlays

    register_overlays()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("pretrain", overrides=[f"sweep={name}"], return_hydra_config=True)
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert cfg.hydra.sweeper.params


def test_prepare_config_composes(compose_pretrain):
    cfg = compose_pretrain(name="prepare", tiny=False)
    assert cfg.data.corpus == "bundled:wikipedia"


@pytest.mark.parametrize("name", overlay_names("experiment"))
def test_prepare_composes_every_recipe_with_its_data_and_tokenizer(compose_pretrain, name):
    # clozelab prepare experiment=NAME builds the cache that pretrain experiment=NAME reuses
    prepare = compose_pretrain(f"experiment={name}", name="prepare", tiny=False)
    pretrain = compose_pretrain(f"experiment={name}", tiny=False)
    assert prepare.data == pretrain.data
    assert prepare.tokenizer == pretrain.tokenizer


def test_experiment_bert_is_bert(compose_pretrain):
    cfg = compose_pretrain("experiment=bert", tiny=False)
    assert cfg.corruption._target_.endswith("TokenMasking")
    assert cfg.corruption.rate == 0.15
    assert (cfg.corruption.mask_prob, cfg.corruption.random_prob) == (0.8, 0.1)
    assert sorted(cfg.objective) == ["mlm", "nsp"]
    assert cfg.data.instances == "segment_pair"
