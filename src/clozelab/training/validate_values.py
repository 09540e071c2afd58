"""Types and ranges of the scalar knobs (seed, optimizer, schedule, trainer budgets and
intervals), checked when the config is composed, before any data is read: a wrong value is one
ClozelabError naming the key, the value and the fix, never a traceback from deep inside torch or
Lightning after preprocessing and a validation pass."""

from __future__ import annotations

import re

from omegaconf import DictConfig, ListConfig, OmegaConf

from clozelab.core.errors import config_error

SEED_MAX = 2**32 - 1  # numpy's seed range, which pl.seed_everything uses
DURATION = re.compile(r"^\d+:\d{1,2}:\d{1,2}:\d{1,2}$")  # Lightning's DD:HH:MM:SS
DURATION_KEYS = ("weeks", "days", "hours", "minutes", "seconds", "milliseconds", "microseconds")
DECAYS = ("linear", "cosine", "constant")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(cfg, key: str, *, minimum=None, above=None, maximum=None, integer=False, fix=""):
    """The value of ``key`` when it is a number in range (None when absent or null)."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        return None
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else _is_number(value)
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum}")
        ok = ok and value >= minimum
    if above is not None:
        bounds.append(f"> {above}")
        ok = ok and value > above
    if maximum is not None:
        bounds.append(f"<= {maximum}")
        ok = ok and value <= maximum
    if not ok:
        problem = f"must be {kind}{' ' + ' and '.join(bounds) if bounds else ''}"
        raise config_error(key, value, problem, fix or f"set {key} to {kind} in that range")
    return value


def check_seed(cfg: DictConfig) -> None:
    number(
        cfg,
        "seed",
        minimum=0,
        maximum=SEED_MAX,
        integer=True,
        fix=f"use a whole number from 0 to {SEED_MAX}, e.g. seed=1234",
    )


def check_optim(cfg: DictConfig) -> None:
    number(
        cfg,
        "optim.lr",
        minimum=0,
        fix="e.g. optim.lr=1e-3 (BERT-Base: 1e-4; 0 freezes the weights)",
    )
    number(cfg, "optim.weight_decay", minimum=0, fix="e.g. optim.weight_decay=0.01")
    number(cfg, "optim.eps", above=0, fix="e.g. optim.eps=1e-6")
    betas = OmegaConf.select(cfg, "optim.betas", default=None)
    if betas is not None and not (
        isinstance(betas, ListConfig)
        and len(betas) == 2
        and all(_is_number(b) and 0 <= b < 1 for b in betas)
    ):
        raise config_error(
            "optim.betas", betas, "must be two numbers in [0, 1)", "e.g. optim.betas=[0.9,0.999]"
        )
    check_kernel_flags(cfg)


#: AdamW's kernel switches: torch takes any truthy value (``optim.fused=maybe`` ran fused).
KERNEL_FLAGS = ("fused", "foreach", "differentiable")


def check_kernel_flags(cfg: DictConfig) -> None:
    """``optim.fused`` / ``foreach`` / ``differentiable`` are true, false or null, and ``fused``
    is not combined with the other two (torch refuses that after the data is prepared)."""
    flags = {k: OmegaConf.select(cfg, f"optim.{k}", default=None) for k in KERNEL_FLAGS}
    for key, value in flags.items():
        if value is not None and not isinstance(value, bool):
            fix = f"optim.{key}=true or optim.{key}=false"
            raise config_error(f"optim.{key}", value, "must be true, false or null", fix)
    for other in ("foreach", "differentiable"):
        if flags["fused"] and flags[other]:
            raise config_error(
                f"optim.{other}",
                True,
                f"torch's AdamW has no {other} form of its fused kernel (optim.fused=true, the "
                "default of optim=adamw)",
                f"add optim.fused=false, or drop optim.{other}",
            )


def check_scheduler(cfg: DictConfig) -> None:
    number(
        cfg,
        "scheduler.warmup",
        minimum=0,
        fix="a fraction of the run below 1 (e.g. 0.06) or a number of steps",
    )
    number(cfg, "scheduler.min_ratio", minimum=0, maximum=1, fix="e.g. scheduler.min_ratio=0.0")
    decay = OmegaConf.select(cfg, "scheduler.decay", default=None)
    if decay is not None and decay not in DECAYS:
        raise config_error("scheduler.decay", decay, "unknown decay", f"use one of {list(DECAYS)}")


def check_max_time(cfg: DictConfig) -> None:
    value = OmegaConf.select(cfg, "trainer.max_time", default=None)
    if value is None:
        return
    if isinstance(value, str) and DURATION.match(value.strip()):
        return
    if (
        isinstance(value, DictConfig)
        and value
        and all(k in DURATION_KEYS and _is_number(v) and v >= 0 for k, v in value.items())
    ):
        return
    raise config_error(
        "trainer.max_time",
        value,
        "not a duration",
        "write it as DD:HH:MM:SS, e.g. trainer.max_time=00:12:00:00 for 12 hours, or as "
        "trainer.max_time={hours:12}",
    )


def _fraction_or_count(cfg, key: str, example: str, zero_ok: bool) -> None:
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        return
    least = 0 if zero_ok else 1
    if isinstance(value, float):
        ok = (value >= 0 if zero_ok else value > 0) and value <= 1
    else:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
    if not ok:
        raise config_error(
            key, value, "must be a fraction in (0, 1] or a whole count", f"e.g. {key}={example}"
        )


def check_trainer_values(cfg: DictConfig) -> None:
    number(
        cfg,
        "trainer.max_steps",
        minimum=-1,
        integer=True,
        fix="a number of steps, e.g. trainer.max_steps=1000 (-1: no step limit)",
    )
    number(
        cfg,
        "trainer.max_epochs",
        minimum=-1,
        integer=True,
        fix="e.g. trainer.max_epochs=3 (-1: no epoch limit)",
    )
    check_max_time(cfg)
    _fraction_or_count(cfg, "trainer.val_check_interval", "100", zero_ok=False)
    _fraction_or_count(cfg, "trainer.limit_val_batches", "20", zero_ok=True)
    _fraction_or_count(cfg, "trainer.limit_train_batches", "1.0", zero_ok=False)
    number(
        cfg,
        "trainer.log_every_n_steps",
        minimum=1,
        integer=True,
        fix="e.g. trainer.log_every_n_steps=10",
    )
    number(
        cfg,
        "trainer.accumulate_grad_batches",
        minimum=1,
        integer=True,
        fix="e.g. trainer.accumulate_grad_batches=4",
    )
    number(
        cfg,
        "trainer.gradient_clip_val",
        minimum=0,
        fix="e.g. trainer.gradient_clip_val=1.0 (null: no clipping)",
    )
    number(
        cfg,
        "callbacks.checkpoint_every_n_steps",
        minimum=1,
        integer=True,
        fix="e.g. callbacks.checkpoint_every_n_steps=100",
    )
    number(
        cfg,
        "callbacks.log_every_n_steps",
        minimum=1,
        integer=True,
        fix="e.g. callbacks.log_every_n_steps=50",
    )


def check_values(cfg: DictConfig) -> None:
    """Every check of this module (keys a config does not have are skipped)."""
    check_seed(cfg)
    check_optim(cfg)
    check_scheduler(cfg)
    check_trainer_values(cfg)
