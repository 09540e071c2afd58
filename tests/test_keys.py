"""Misspelt keys and arguments are refused when the command line is composed, before any work:
the message names the key and the closest valid ones, and no run directory is left."""

from __future__ import annotations

import pytest
from helpers import compose_config

from clozelab.cli import main
from clozelab.core.errors import ClozelabError
from clozelab.core.keys import check_arguments, closest, did_you_mean, preflight


def test_closest_keys():
    keys = ["trainer.max_steps", "trainer.max_time", "trainer.min_steps", "optim.lr", "optim"]
    assert closest("trainer.max_stepz", keys)[0] == "trainer.max_steps"
    assert "optim" not in closest("optim.lrr", keys)  # never the key's own parent
    assert did_you_mean("optim.lrr", keys) == " Did you mean optim.lr?"
    assert did_you_mean("zzz.qqq", keys) == ""


@pytest.mark.parametrize(
    ("override", "message"),
    [("trainer.max_stepz=5", "trainer.max_stepz: no such key in the pretrain config. Did you "
                             "mean trainer.max_steps"),
     ("corruption.rat=0.3", "Did you mean corruption.rate"),
     ("modle=tiny", "modle: no such key in the pretrain config. Did you mean model?"),
     ("seed=1", None)],
)  # fmt: skip
def test_a_misspelt_override_gets_suggestions(override, message):
    if message is None:
        preflight("pretrain", [override, "model=tiny", "corruption.rate=0.15,0.4"])
        return
    with pytest.raises(ClozelabError, match=message.replace("?", r"\?")):
        preflight("pretrain", [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [("+trainer.max_stepz=5", r"trainer.max_stepz: not an argument of pytorch_lightning.Trainer. "
                              r"Did you mean trainer.max_steps"),
     ("+optim.lrr=0.1", r"optim.lrr: not an argument of torch.optim.AdamW. Did you mean "
                        r"optim.lr\?"),
     ("+scheduler.warmpu=10", r"scheduler.warmpu: not a scheduler setting. Did you mean "
                              r"scheduler.warmup\?.*scheduler takes decay, min_ratio, warmup"),
     ("+logger.wandb.projet=x", r"logger.wandb.projet: not a W&B setting. Did you mean "
                                r"logger.wandb.project\?")],
)  # fmt: skip
def test_arguments_are_checked_against_what_reads_them(override, message):
    with pytest.raises(ClozelabError, match=message):
        check_arguments(compose_config("logger=wandb", override))


def test_every_preset_passes_the_argument_checks():
    for trainer in ("cpu", "gpu", "ddp", "fsdp", "deepspeed", "multinode", "tpu"):
        check_arguments(compose_config(f"trainer={trainer}"))
    check_arguments(compose_config("logger=tensorboard"))


def test_the_cli_refuses_before_any_run_directory_exists(tmp_path, capsys):
    run = tmp_path / "run"
    for override in ("trainer.max_stepz=5", "+trainer.max_stepz=5"):
        with pytest.raises(SystemExit) as exit_info:
            main(["pretrain", override, f"hydra.run.dir={run}"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: trainer.max_stepz: ") and "Traceback" not in err
        assert "trainer.max_steps" in err
    assert not run.exists()  # refused before Hydra made the run directory
