"""Keys the config does not know, caught when the command line is composed, before any work.

- ``preflight``: composes the command's config from its overrides the way Hydra will (sweep
  values: their first value) and refuses a misspelt key with the closest valid ones ("did you mean
  trainer.max_steps?") instead of Hydra's "not in struct"; then ``check_arguments``.
- ``check_arguments``: the arguments clozelab hands to a constructor (``trainer`` to
  ``pytorch_lightning.Trainer``, ``optim`` to its ``_target_``) and the keys it reads
  (``scheduler``, ``logger``) against what they accept, so ``+trainer.max_stepz=5`` fails at once
  with a message naming the key and its nearest neighbours, not with a traceback after the data
  is prepared.

Each refusal is a ClozelabError (``clozelab`` prints it and exits 2, leaving no run directory).
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterable

from omegaconf import DictConfig

from clozelab.core.errors import ClozelabError

# Trainer keys clozelab reads itself (not pl.Trainer arguments).
TRAINER_EXTRA = ("max_tokens",)
# Keys each group is read by: scheduler by clozelab.training.optim.build_scheduler, logger by
# clozelab.training.tracking (logger.wandb by its W&B logger).
SCHEDULER_KEYS = ("warmup", "decay", "min_ratio")
LOGGER_KEYS = ("kind", "wandb", "tensorboard")
WANDB_KEYS = ("project", "entity", "group", "job_type", "tags", "mode")
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
NOT_IN_STRUCT = re.compile(r"Could not override '([^']+)'|Key '([^']+)' is not in struct")


def closest(key: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates nearest ``key``: its siblings (same parent) by their last part, else any
    key by the whole dotted path (a misspelt parent)."""
    parents = {key.rsplit(".", i)[0] for i in range(1, key.count(".") + 1)}
    candidates = sorted(set(candidates) - parents - {key})
    head, _, last = key.rpartition(".")
    siblings = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == head}
    found = [siblings[m] for m in difflib.get_close_matches(last, siblings, n=n, cutoff=0.6)]
    return found or difflib.get_close_matches(key, candidates, n=n, cutoff=0.6)


def did_you_mean(key: str, candidates: Iterable[str]) -> str:
    """`` Did you mean trainer.max_steps?`` (empty when nothing is close)."""
    found = closest(key, candidates)
    if not found:
        return ""
    return " Did you mean " + " or ".join(found) + "?"


def flat_keys(node, prefix: str = "") -> list[str]:
    """Every dotted key of a config (lists are leaves)."""
    out = []
    if isinstance(node, DictConfig):
        for key in node:
            path = f"{prefix}{key}"
            out.append(path)
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                out += flat_keys(child, path + ".")
    return out


# --------------------------------------------------------------------------- arguments


def _parameters(target) -> tuple[set[str], bool]:
    """A callable's keyword names and whether it takes ``**kwargs``."""
    signature = inspect.signature(target)
    names = {
        p.name
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    open_ended = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    return names, open_ended


def _refuse(group: str, unknown: list[str], accepted: Iterable[str], what: str) -> None:
    accepted = sorted(set(accepted))
    full = [f"{group}.{name}" for name in accepted]
    lines = [f"{group}.{key}: not {what}.{did_you_mean(f'{group}.{key}', full)}" for key in unknown]
    takes = ", ".join(accepted) if len(accepted) <= 12 else f"{what.removeprefix('an ')}s only"
    raise ClozelabError(" ".join(lines) + f" Fix: remove or correct it ({group} takes {takes}).")


def _check_keys(node, group: str, accepted: Iterable[str], what: str) -> None:
    if not isinstance(node, DictConfig):
        return
    accepted = set(accepted)
    unknown = [str(k) for k in node if str(k) not in accepted and str(k) not in HYDRA_KEYS]
    if unknown:
        _refuse(group, unknown, accepted, what)


def check_trainer(node) -> None:
    import pytorch_lightning as pl

    names, _ = _parameters(pl.Trainer.__init__)
    names.discard("self")
    _check_keys(
        node, "trainer", names | set(TRAINER_EXTRA), "an argument of pytorch_lightning.Trainer"
    )


def check_optimizer(node) -> None:
    """``optim`` against its ``_target_`` (``params`` is passed by clozelab)."""
    from clozelab.core.config import target_class

    if not isinstance(node, DictConfig) or not node.get("_target_"):
        return
    cls = target_class(node, "optim")
    names, open_ended = _parameters(cls.__init__ if inspect.isclass(cls) else cls)
    if open_ended:
        return
    names -= {"self", "params"}
    _check_keys(node, "optim", names, f"an argument of {node._target_}")


def check_logger(node) -> None:
    _check_keys(node, "logger", LOGGER_KEYS, "a logger setting")
    if isinstance(node, DictConfig) and isinstance(node.get("wandb"), DictConfig):
        _check_keys(node.wandb, "logger.wandb", WANDB_KEYS, "a W&B setting")


def check_arguments(cfg: DictConfig) -> None:
    """The trainer, optim, scheduler and logger nodes that ``cfg`` has, against what reads them."""
    checks = {
        "trainer": check_trainer,
        "optim": check_optimizer,
        "logger": check_logger,
        "scheduler": lambda node: _check_keys(
            node, "scheduler", SCHEDULER_KEYS, "a scheduler setting"
        ),
    }
    for group, check in checks.items():
        node = cfg.get(group) if isinstance(cfg, DictConfig) else None
        if node is not None:
            check(node)


# --------------------------------------------------------------------------- the command line


def _first_values(overrides: list[str]) -> list[str] | None:
    """The overrides with each sweep replaced by its first value (one job of the grid); None
    when they cannot be parsed (Hydra then reports it in its own words)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return None
    out = []
    for override, text in zip(parsed, overrides, strict=True):
        if override.is_sweep_override():
            try:
                first = next(iter(override.sweep_string_iterator()))
            except Exception:  # an interval (Optuna), a glob: the key still exists
                continue
            out.append(f"{text.split('=', 1)[0]}={first}")
        else:
            out.append(text)
    return out


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    from clozelab.core.config import conf_dir

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose(config_name, overrides=overrides)


def _missing_key(exc: BaseException) -> str | None:
    text = "\n".join(str(e) for e in (exc, exc.__cause__) if e is not None)
    match = NOT_IN_STRUCT.search(text)
    if match is None:
        return None
    key = match.group(1) or match.group(2)
    full = re.search(r"full_key: (\S+)", text)
    return full.group(1) if full else key


def preflight(config_name: str, overrides: list[str]) -> None:
    """Compose ``config_name`` with the command line's overrides and check its keys (see the
    module docstring). Anything else that fails here is left to Hydra, which reports it."""
    plain = [o for o in overrides if not o.startswith("-")]
    if len(plain) != len(overrides) or not config_name:  # --help, --cfg, -m: Hydra's own
        return
    first = _first_values(plain)
    if first is None:
        return
    try:
        cfg = _compose(config_name, first)
    except Exception as exc:
        key = _missing_key(exc)
        if key is None:
            return
        refuse_override(config_name, first, key)
        return
    check_arguments(cfg)


def refuse_override(config_name: str, overrides: list[str], key: str) -> None:
    """Raise the message for an override of a key the config does not have."""
    kept = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
    try:
        candidates = flat_keys(_compose(config_name, kept))
    except Exception:
        candidates = []
    hint = did_you_mean(key, candidates)
    group = key.split(".", 1)[0]
    raise ClozelabError(
        f"{key}: no such key in the {config_name} config.{hint} Fix: correct the name "
        f"(`clozelab {config_name} --cfg job` prints every key"
        + (f"; the {group} keys are listed under `{group}:`" if "." in key else "")
        + "). A key that really is new is added with +KEY=VALUE, which only helps where the "
        "code reads it."
    )
