"""Trainer presets (conf/trainer/): compose-time checks and the Lightning Trainer's arguments.

``cfg.trainer`` holds Lightning Trainer arguments plus clozelab's ``max_tokens``, with two
additions: ``strategy`` and each entry of ``plugins`` may be a node with ``_target_`` (built here;
in a strategy node, ``auto_wrap_policy`` and ``activation_checkpointing_policy`` list module
classes by dotted name), and ``precision: auto`` means bf16-mixed on a CUDA GPU with bf16,
16-mixed on an older GPU and 32-true elsewhere.

``validate_trainer`` runs before any data is read: ``check_trainer`` looks at the config alone
(every preset passes it on any machine) and ``check_environment`` at this machine (GPUs,
packages, cluster launch).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import get_args

import torch
from hydra.utils import get_class
from lightning_fabric.plugins.precision.precision import (
    _PRECISION_INPUT_STR,
    _PRECISION_INPUT_STR_ALIAS,
)
from lightning_fabric.plugins.precision.xla import _PRECISION_INPUT as _XLA_PRECISION
from omegaconf import DictConfig, OmegaConf

from clozelab.core.errors import ClozelabError, config_error

PRECISIONS = (*get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS), "auto")
XLA_PRECISIONS = get_args(_XLA_PRECISION)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "tpu", "mps")
#: strategy family -> (module it needs, the fix when it is missing)
PACKAGES = {
    "deepspeed": (
        "deepspeed",
        "pip install deepspeed (on a CUDA machine), or use trainer=ddp or trainer=fsdp",
    ),
    "xla": (
        "torch_xla",
        "pip install 'torch_xla[tpu]' on a TPU host (see the PyTorch/XLA "
        "install guide), or use trainer=cpu, trainer=gpu or trainer=ddp",
    ),
}
#: Environment variables that say an external launcher (SLURM, torchrun, LSF, or a Lightning
#: command run by hand on every node) started this process as one rank of several.
LAUNCHED_VARIABLES = ("SLURM_NTASKS", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
                      "LSB_JOBID", "TORCHELASTIC_RUN_ID")  # fmt: skip
CLASS_LISTS = ("auto_wrap_policy", "activation_checkpointing_policy")


def _plain(trainer_cfg) -> dict:
    if isinstance(trainer_cfg, DictConfig):
        return OmegaConf.to_container(trainer_cfg, resolve=True)
    return dict(trainer_cfg)


def strategy_family(strategy) -> str:
    """``ddp``, ``fsdp``, ``deepspeed``, ``xla``, ``auto`` or the strategy's own name, for a
    strategy given by name (``deepspeed_stage_2``) or as a ``_target_`` node."""
    if strategy is None:
        return "auto"
    if isinstance(strategy, dict):
        name = str(strategy.get("_target_", "")).rsplit(".", 1)[-1].lower().removesuffix("strategy")
    else:
        name = str(strategy).lower()
    for family in ("fsdp", "deepspeed", "xla", "ddp"):
        if name.startswith(family):
            return family
    return name


def _device_count(devices, available: int) -> int:
    """Processes per node that ``trainer.devices`` asks for (``auto``/-1: all available)."""
    if devices in (None, "auto", -1, "-1"):
        return max(available, 1)
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    return int(devices)


def _accelerator(trainer: dict) -> str:
    """The accelerator Lightning will pick: ``auto`` becomes gpu when CUDA is visible."""
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if accelerator == "cuda" else accelerator


def _available(accelerator: str) -> int:
    if accelerator == "gpu":
        return torch.cuda.device_count()
    if accelerator == "cpu":
        return os.cpu_count() or 1
    return 0  # tpu / mps: Lightning counts them


def world_size(trainer_cfg) -> int:
    """Ranks of the run: processes per node x num_nodes (``devices=auto`` on CPU is 1 process)."""
    trainer = _plain(trainer_cfg)
    devices = trainer.get("devices", "auto")
    if devices in (None, "auto", -1, "-1"):
        per_node = torch.cuda.device_count() if _accelerator(trainer) == "gpu" else 1
    else:
        per_node = _device_count(devices, 1)
    return max(per_node, 1) * int(trainer.get("num_nodes") or 1)


def resolve_precision(trainer: dict) -> str:
    """``precision: auto`` on this machine; any other value unchanged."""
    precision = str(trainer.get("precision", "32-true"))
    if precision != "auto":
        return precision
    if _accelerator(trainer) == "gpu" and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


# --------------------------------------------------------------------------- checks


def check_trainer(trainer_cfg) -> None:
    """The trainer config on its own: valid values and combinations (no hardware looked at)."""
    trainer = _plain(trainer_cfg)
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    if accelerator not in ACCELERATORS:
        raise config_error(
            "trainer.accelerator",
            accelerator,
            "unknown accelerator",
            f"use one of {list(ACCELERATORS)}",
        )
    precision = str(trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise config_error(
            "trainer.precision",
            trainer.get("precision"),
            "unknown precision",
            f"use one of {list(PRECISIONS)}",
        )
    devices = trainer.get("devices", "auto")
    try:
        count = _device_count(devices, 1)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise config_error(
            "trainer.devices",
            devices,
            "not a device count or list of ids",
            "use a positive integer, a list of device ids, -1 or auto",
        )
    nodes = trainer.get("num_nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise config_error(
            "trainer.num_nodes",
            nodes,
            "must be an integer >= 1",
            "set trainer.num_nodes to the number of machines",
        )
    strategy = trainer.get("strategy", "auto")
    _check_strategy(strategy)
    for i, plugin in enumerate(trainer.get("plugins") or []):
        if isinstance(plugin, dict):
            _import(plugin, f"trainer.plugins[{i}]")
    _check_combination(accelerator, strategy_family(strategy), precision)


def _import(node: dict, key: str) -> type:
    target = node.get("_target_")
    try:
        return get_class(str(target))
    except Exception as exc:  # hydra wraps import errors of every kind
        raise config_error(
            f"{key}._target_", target, f"cannot be imported ({exc})", "name an importable class"
        ) from None


def _check_strategy(strategy) -> None:
    if isinstance(strategy, dict):
        _import(strategy, "trainer.strategy")
        for key in CLASS_LISTS:
            for name in strategy.get(key) or []:
                _import({"_target_": name}, f"trainer.strategy.{key}")
        stage = strategy.get("stage")
        if strategy_family(strategy) == "deepspeed" and stage not in (0, 1, 2, 3):
            raise config_error(
                "trainer.strategy.stage",
                stage,
                "DeepSpeed ZeRO has stages 0-3",
                "use trainer.strategy.stage=2 (optimizer states and gradients "
                "sharded) or 3 (parameters too)",
            )
        return
    from pytorch_lightning.strategies import StrategyRegistry

    if strategy != "auto" and strategy not in StrategyRegistry:
        raise config_error(
            "trainer.strategy",
            strategy,
            "unknown strategy",
            f"use auto or one of {sorted(StrategyRegistry)}",
        )


def _check_combination(accelerator: str, family: str, precision: str) -> None:
    if accelerator == "tpu" and family not in ("xla", "auto"):
        raise config_error(
            "trainer.strategy",
            family,
            "TPUs train with the XLA strategy",
            "use trainer=tpu (strategy xla)",
        )
    if family == "xla" and accelerator != "tpu":
        raise config_error(
            "trainer.accelerator",
            accelerator,
            "the XLA strategy runs on TPUs",
            "use trainer=tpu, or trainer=ddp off TPUs",
        )
    if accelerator == "tpu" and precision not in (*XLA_PRECISIONS, "32"):
        raise config_error(
            "trainer.precision",
            precision,
            "XLA does not run this precision",
            f"use one of {list(XLA_PRECISIONS)}",
        )
    if family in ("fsdp", "deepspeed") and accelerator == "cpu":
        raise config_error(
            "trainer.accelerator",
            accelerator,
            f"{family} shards across GPUs",
            "use trainer=ddp trainer.devices=N for N CPU processes",
        )
    if accelerator == "cpu" and precision in ("16", "16-mixed"):
        raise config_error(
            "trainer.precision",
            precision,
            "fp16 autocast does not run on CPU",
            "use bf16-mixed or 32-true on CPU",
        )


def check_packages(trainer: dict) -> None:
    """DeepSpeed and XLA strategies need their package; a clear error when it is missing."""
    family = strategy_family(trainer.get("strategy"))
    if str(trainer.get("accelerator")).lower() == "tpu":
        family = "xla"
    if family in PACKAGES:
        module, install = PACKAGES[family]
        if importlib.util.find_spec(module) is None:
            raise ClozelabError(
                f"trainer.strategy={family}: needs the {module} package, which is not installed. "
                f"Fix: {install}."
            )


def _native_cpu_bf16() -> bool:
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def check_environment(trainer_cfg) -> None:
    """This machine against the trainer config: packages, GPUs, device count, cluster launch."""
    trainer = _plain(trainer_cfg)
    check_packages(trainer)
    accelerator = _accelerator(trainer)
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ClozelabError(
            f"trainer.accelerator={trainer.get('accelerator')}: no CUDA GPU is visible "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False). Fix: trainer=cpu, "
            "or trainer=ddp trainer.devices=N for N CPU processes."
        )
    available = _available(accelerator)
    devices = trainer.get("devices", "auto")
    if available and devices not in (None, "auto", -1, "-1"):
        ids = devices if isinstance(devices, (list, tuple)) else None
        if isinstance(devices, str) and "," in devices:
            ids = [int(d) for d in devices.split(",") if d.strip()]
        too_many = max(ids) >= available if ids else _device_count(devices, available) > available
        if too_many and accelerator == "gpu":
            raise ClozelabError(
                f"trainer.devices={devices}: this machine has {available} CUDA GPU(s). Fix: "
                f"trainer.devices={available} (or fewer), or trainer.devices=auto."
            )
        if too_many:  # CPU processes share the cores: slower, same results
            warnings.warn(
                f"trainer.devices={devices} CPU processes on {available} CPU cores: each process "
                "gets less than a core (slower; the results do not change).",
                stacklevel=2,
            )
    precision = resolve_precision(trainer)
    if accelerator == "cpu" and precision.startswith("bf16") and not _native_cpu_bf16():
        warnings.warn(
            f"trainer.precision={precision} on a CPU without native bf16 (no AVX512-BF16 or "
            "AMX): bf16 matmuls are emulated and usually slower than trainer.precision=32-true.",
            stacklevel=2,
        )
    _check_launch(trainer, accelerator)


def _check_launch(trainer: dict, accelerator: str) -> None:
    launched = any(name in os.environ for name in LAUNCHED_VARIABLES)
    nodes = int(trainer.get("num_nodes") or 1)
    if nodes > 1 and not launched:
        raise ClozelabError(
            f"trainer.num_nodes={nodes}: this process was not started as one rank of a "
            "multi-node job (no SLURM or torchrun environment), so it would wait for the other "
            "nodes forever. Fix: launch with hydra/launcher=slurm (or srun, or torchrun "
            "on every node), or set trainer.num_nodes=1."
        )
    slurm = [
        p
        for p in trainer.get("plugins") or []
        if isinstance(p, dict) and str(p.get("_target_", "")).endswith("SLURMEnvironment")
    ]
    if slurm and "SLURM_NTASKS" not in os.environ:
        raise ClozelabError(
            "trainer.plugins: a SLURMEnvironment is configured but this process does not run "
            "under SLURM (no SLURM_NTASKS). Fix: launch with hydra/launcher=slurm or "
            "srun; under torchrun set trainer.plugins=[]."
        )
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if (
        not launched
        and world_size(trainer) > 1
        and HydraConfig.initialized()
        and HydraConfig.get().mode == RunMode.MULTIRUN
    ):
        raise ClozelabError(
            f"trainer.devices={trainer.get('devices')} in a local sweep: Lightning starts the "
            "extra processes by re-running the command line, which would re-launch the whole "
            "sweep. Fix: trainer.devices=1 for sweeps on one machine, or "
            "hydra/launcher=slurm (one task per device)."
        )


def validate_trainer(trainer_cfg, environment: bool = True) -> None:
    """``check_trainer`` and (unless ``environment`` is False) ``check_environment``."""
    check_trainer(trainer_cfg)
    if environment:
        check_environment(trainer_cfg)


# --------------------------------------------------------------------------- Trainer arguments


def _build(node: dict, key: str):
    node = dict(node)
    cls = _import(node, key)
    node.pop("_target_")
    for name in CLASS_LISTS:
        if node.get(name) is not None:
            node[name] = {_import({"_target_": n}, f"{key}.{name}") for n in node[name]}
    return cls(**node)


def trainer_kwargs(trainer_cfg) -> dict:
    """``pl.Trainer`` arguments from ``cfg.trainer`` (``max_tokens`` kept for the caller; strategy
    and plugin nodes built; ``precision: auto`` resolved; ``plugins`` always a list)."""
    kwargs = _plain(trainer_cfg)
    check_packages(kwargs)
    kwargs["precision"] = resolve_precision(kwargs)
    strategy = kwargs.get("strategy")
    if isinstance(strategy, dict):
        kwargs["strategy"] = _build(strategy, "trainer.strategy")
    kwargs["plugins"] = [
        _build(p, f"trainer.plugins[{i}]") if isinstance(p, dict) else p
        for i, p in enumerate(kwargs.get("plugins") or [])
    ]
    return kwargs
