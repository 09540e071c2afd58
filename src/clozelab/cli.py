"""``clozelab <command> [hydra overrides]``: one entry point for every command."""

from __future__ import annotations

import importlib
import logging
import sys

USAGE = """usage: clozelab <command> [hydra overrides ...]

commands:
  prepare    tokenizer + cached shards of data.corpus (no training)
  pretrain   pre-train (default: a small BERT, MLM + NSP, on the bundled Wikipedia sample)

examples:
  clozelab pretrain
  clozelab pretrain experiment=bert model=tiny trainer.max_steps=100
  clozelab pretrain sweep=seeds
  clozelab prepare data.corpus=/data/enwiki-latest-pages-articles.xml.bz2
  clozelab pretrain --help        (Hydra's help: config groups and their options)
"""

# command -> (primary config name, "module:function")
COMMANDS = {
    "prepare": ("prepare", "clozelab.prepare:prepare"),
    "pretrain": ("pretrain", "clozelab.pretrain:pretrain"),
}

log = logging.getLogger("clozelab")


def _function(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def run_command(command: str, overrides: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from clozelab.config import conf_dir, register_overlays
    from clozelab.errors import ClozelabError

    config_name, spec = COMMANDS[command]
    register_overlays()

    def task(cfg):
        try:
            return _function(spec)(cfg)
        except ClozelabError as exc:
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                log.error("job failed: %s", exc)  # the other jobs of the sweep go on
                return None
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    task.__module__ = f"clozelab.{command}"  # Hydra names the job after it
    main = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=config_name)(
        task
    )
    sys.argv = [f"clozelab-{command}", *overrides]
    main()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}.\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    run_command(command, overrides)


if __name__ == "__main__":
    main()
