"""``clozelab <command> [hydra overrides]``: one entry point for every command."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

USAGE = """usage: clozelab <command> [hydra overrides ...]

commands:
  prepare    tokenizer + cached shards of data.corpus (no training)
  pretrain   pre-train (default: a small BERT, MLM + NSP, on the bundled Wikipedia sample)
  finetune   fine-tune one downstream task on several seeds -> RUN/eval/<task>.json
  evaluate   fine-tune and score a suite (glue, bundled, ner, qa) -> RUN/eval/*.json
  export     clozelab export RUN_DIR OUT_DIR [--force]: an HF transformers BERT directory
  report     clozelab report SWEEP_DIR [...] [--out DIR] [--baseline K=V ...] [--metric NAME ...]
             [--only K=V ...]: per-setting mean ± std, 95% CI, paired tests vs the baseline, plots
  bench      pre-training step vs HF transformers, corruption throughput -> bench.json
  preview    corrupted examples + statistics of a corruption -> preview.json

examples:
  clozelab pretrain
  clozelab pretrain experiment=bert model=tiny trainer.max_steps=100
  clozelab pretrain sweep=seeds
  clozelab report multirun/DATE/TIME
  clozelab prepare data.corpus=/data/enwiki-latest-pages-articles.xml.bz2
  clozelab finetune task=sst2 checkpoint=outputs/DATE/TIME data_dir=../shared/data
  clozelab evaluate suite=glue checkpoint=outputs/DATE/TIME data_dir=../shared/data
  clozelab preview corruption=span preview.sequences=1000
  clozelab pretrain --help        (Hydra's help: config groups and their options)
"""

# command -> (primary config name, "module:function")
COMMANDS = {
    "prepare": ("prepare", "clozelab.prepare:prepare"),
    "pretrain": ("pretrain", "clozelab.pretrain:pretrain"),
    "finetune": ("finetune", "clozelab.finetune:finetune"),
    "evaluate": ("evaluate", "clozelab.finetune:evaluate"),
    "export": (None, "clozelab.export:main"),  # not Hydra: clozelab export RUN_DIR OUT_DIR
    "report": (None, "clozelab.report.aggregate:main"),  # not Hydra: clozelab report SWEEP_DIR ...
    "bench": ("bench", "clozelab.bench:bench"),
    "preview": ("preview", "clozelab.preview:preview"),
}

# commands that write Hydra's launch record (.hydra/) themselves, once their run directory is
# claimed (clozelab.core.claim); Hydra's own writing is off (hydra.output_subdir: null)
RUN_DIR_OWNERS = ("pretrain",)

log = logging.getLogger("clozelab")


def _function(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


class _DropTips(logging.Filter):
    """Lightning advertises other products at start-up; keep the log about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def _quiet_dependencies() -> None:
    import warnings

    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # val/ metrics are token-weighted sums reduced across ranks by PretrainModule itself
    warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed.*")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())


def point_rank_launcher(command: str, overrides: list[str]) -> None:
    """Make ``sys.argv`` re-run this command: Lightning's DDP launcher starts the other ranks of
    one machine by running ``sys.argv`` again (``python -m SPEC argv[1:]`` under ``python -m``,
    else ``python argv[0] argv[1:]``)."""
    import __main__

    if getattr(__main__, "__spec__", None) is not None:  # python -m clozelab <command> ...
        sys.argv = [sys.argv[0], command, *overrides]
    else:  # the console script: a plain script path that runs the command
        os.environ["CLOZELAB_COMMAND"] = command
        sys.argv = [str(Path(__file__).with_name("rank_entry.py")), *overrides]


def inside_the_run(command: str, overrides: list[str]) -> list[str]:
    """``finetune``/``evaluate`` of a clozelab run keep their log, config and CSV inside that run
    (``<run>/eval/<command>/<date>_<time>/``, beside the ``eval/<task>.json`` they write), not in
    a new ``outputs/...`` directory; an explicit ``hydra.run.dir`` or a sweep is left alone."""
    if command not in ("finetune", "evaluate") or any(
        o.startswith(("hydra.run.dir=", "-m", "--multirun", "hydra.mode=")) for o in overrides
    ):
        return overrides
    checkpoint = next((o.split("=", 1)[1] for o in overrides if o.startswith("checkpoint=")), None)
    if checkpoint is None or "," in checkpoint:
        return overrides
    from clozelab.core.rundir import run_dir_of

    run = run_dir_of(checkpoint)
    if run is None:
        return overrides
    return [*overrides, f"hydra.run.dir={run.resolve()}/eval/{command}/${{now:%Y-%m-%d_%H-%M-%S}}"]


def run_command(command: str, overrides: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from clozelab.core.config import conf_dir, register_overlays
    from clozelab.core.errors import ClozelabError, user_message
    from clozelab.core.keys import preflight

    config_name, spec = COMMANDS[command]
    register_overlays()
    _quiet_dependencies()
    overrides = inside_the_run(command, overrides)
    try:
        preflight(config_name, overrides)  # misspelt keys, bad arguments: before any work
    except ClozelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    def task(cfg):
        point_rank_launcher(command, overrides)  # Hydra has parsed sys.argv by now
        if command not in RUN_DIR_OWNERS:
            from clozelab.core.claim import write_hydra_record

            write_hydra_record(Path(HydraConfig.get().runtime.output_dir), cfg)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            from clozelab.training.sweep import run_job  # failures isolated, finished jobs skipped

            return run_job(command, _function(spec), cfg)
        try:
            return _function(spec)(cfg)
        except ClozelabError as exc:
            print(f"error: {user_message(exc)}", file=sys.stderr)
            raise SystemExit(2) from None

    task.__module__ = f"clozelab.{command}"  # Hydra names the job after it
    main = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=config_name)(
        task
    )
    sys.argv = [f"clozelab-{command}", *overrides]
    main()


def user_modules_importable() -> None:
    """Put the working directory on ``sys.path``, as ``python -m clozelab`` does, so the console
    script also finds a user's own components (``corruption._target_=my_module.MyCorruption``)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except BrokenPipeError:  # e.g. `clozelab --help | head`: the reader has gone, stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing more to flush at exit
        raise SystemExit(128 + 13) from None  # as a process ended by SIGPIPE


def _main(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    user_modules_importable()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}.\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    if COMMANDS[command][0] is None:  # a plain argparse command
        _function(COMMANDS[command][1])(overrides)
        return
    run_command(command, overrides)


if __name__ == "__main__":
    main()
