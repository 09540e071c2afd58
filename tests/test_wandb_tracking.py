"""W&B: the offline run of each sweep job carries the group (the sweep), job type, tags
(corruption, objectives, recipe, setting), the full config with the group choices, and a summary
with the flat metric names; the W&B sweep file is valid and its command composes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import TINY, compose_config

from clozelab.cli import main
from clozelab.core.config import resource_dir
from clozelab.training import tracking
from clozelab.training.tracking import wandb_identity

BLOCK = 32768  # the .wandb file is a LevelDB-style log of 32 KiB blocks


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file (``run-<id>.wandb``): a 7-byte header,
    then chunks of (crc32, length, type) + data, never straddling a block, type 1 a whole
    record, 2/3/4 its first/middle/last part."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        kind = data[pos + 6] if left >= 7 else 0
        if kind == 0:  # block trailer / padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_run(job_dir: Path) -> dict:
    """run (group, job type, tags), config, summary and exit code of a job's offline W&B run."""
    (run_file,) = job_dir.glob("wandb/offline-run-*/run-*.wandb")
    out = {"config": {}, "summary": {}}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            out["config"].update({i.key: yaml.safe_load(i.value_json)
                                  for i in record.run.config.update})  # fmt: skip
        elif kind == "summary":
            out["summary"].update({i.key: yaml.safe_load(i.value_json)
                                   for i in record.summary.update if i.key})  # fmt: skip
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def test_each_sweep_job_logs_its_own_offline_wandb_run(tmp_path, text_corpus, cache_dir, capfd):
    sweep = tmp_path / "sweep"
    main(["pretrain", *TINY, f"data.corpus={text_corpus}", f"paths.cache_dir={cache_dir}",
          "experiment=bert", "sweep=masking_rate", "corruption.rate=0.3", "setting=ops_mask_only",
          "seed=1,2", "logger=wandb", f"hydra.sweep.dir={sweep}"])  # fmt: skip
    for job, seed in (("0", 1), ("1", 2)):
        run = offline_run(sweep / job)
        assert run["run"].run_group == "masking_rate"  # the sweep, not the recipe's group
        assert run["run"].job_type == "pretrain"
        assert {"mask", "mlm", "nsp", "bert", "ops_mask_only"} <= set(run["run"].tags)
        config = run["config"]
        assert config["seed"] == seed  # its own run, not the previous job's
        assert config["corruption"]["rate"] == 0.3
        assert config["choices"]["setting"] == "ops_mask_only"
        assert config["sweep_meta"]["baseline"]["corruption.rate"] == 0.15
        summary = run["summary"]
        assert summary["status"] == "completed" and summary["steps"] == 6
        assert {"val/mlm_loss", "val/nsp_loss", "initial/val/mlm_loss"} <= set(summary)
        assert run["exit_code"] == 0
    assert "anonymous" not in capfd.readouterr().err  # no deprecated setting passed to wandb


def test_wandb_identity_without_hydra():
    config = {
        "corruption": {"_target_": "clozelab.corruption.span.SpanMasking"},
        "objective": {"mlm": {}, "sbo": {}},
        "sweep_meta": {"name": "objectives"},
    }
    group, job_type, tags, logged = wandb_identity({"tags": ["mine"]}, config)
    assert (group, job_type) == ("objectives", "pretrain")
    assert tags == ["mine", "spanmasking", "mlm", "sbo"]
    assert logged["choices"] == {} and logged["objective"] == config["objective"]
    assert wandb_identity({"group": "g", "job_type": "finetune"}, {})[:2] == ("g", "finetune")


def test_wandb_sweep_file_is_valid_and_its_command_composes():
    """What `wandb agent` runs for one grid point, built with wandb's own macro expansion,
    composes as a single (RUN mode) job of the Hydra sweep with that point's values."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    path = resource_dir("sweeps") / "wandb" / "masking_rate.yaml"
    spec = yaml.safe_load(path.read_text())
    assert spec["method"] in ("grid", "random", "bayes")
    assert spec["metric"]["goal"] in ("minimize", "maximize")
    assert spec["metric"]["name"].startswith(("val/", "eval/"))
    hydra_params = compose_config("sweep=masking_rate", hydra=True).hydra.sweeper.params
    for key, values in spec["parameters"].items():  # the same grid as the Hydra sweep
        assert [str(v) for v in values["values"]] == hydra_params[key].split(","), key
    point = {k: {"value": v["values"][-1]} for k, v in spec["parameters"].items()}
    variables = create_sweep_command_args({"args": point})
    variables["env"] = ["/usr/bin/env"]
    command = []
    for chunk in create_sweep_command(list(spec["command"])):
        is_macro = chunk.startswith("${") and chunk.endswith("}")
        command += variables.get(chunk[2:-1], []) if is_macro else [chunk]
    assert command[:3] == ["/usr/bin/env", "clozelab", "pretrain"]
    cfg = compose_config(*command[3:], hydra=True)
    assert cfg.hydra.mode.name == "RUN"
    assert cfg.corruption.rate == 0.8 and cfg.seed == 3 and cfg.corruption.mask_prob == 1.0
    assert cfg.trainer.max_tokens == 300_000 and cfg.logger.kind == ["csv", "wandb"]
    with pytest.raises(Exception, match="wandb"):  # not a Hydra overlay: not in the group
        compose_config("sweep=wandb/masking_rate")


def test_wandb_init_gets_no_deprecated_anonymous_setting(monkeypatch, tmp_path):
    """Lightning passes ``anonymous=None``, which wandb warns about on every run: it is left out,
    and a W&B that cannot start leaves the run with CSV logging (None, no exception)."""
    import wandb

    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking._wandb({"project": "p"}, tmp_path, "run", {}) is None
    assert seen["mode"] == "offline" and "anonymous" not in seen


def test_wandb_goes_offline_by_itself_without_key_or_network(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert tracking.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: refused at once
    assert tracking.wandb_mode() == "offline"
    assert tracking.wandb_mode("disabled") == "disabled"
