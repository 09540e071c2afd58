"""``model.compile``: ``torch.compile`` for the embedding and the encoder layers, in place.

Each transformer layer is compiled on its own (``nn.Module.compile``), not the encoder as a
whole: the layers share one compiled graph, and the encoder's data-dependent steps (is there
padding? which tokens are real?) stay in eager Python between them. The embedding is compiled
too; the encoder names its parts with its ``compile_targets`` hook (each layer; ERNIE-THU's
aggregators too; other encoders, BiLSTM, whole). An objective adds what it names with its
``compile_targets`` hook (the seq2seq objective: each decoder layer); the others are not
compiled: the MLM decoder's fused chunked cross-entropy is already one custom autograd function.

Compiling in place keeps every module where it was, so ``state_dict`` keys, checkpoints, resume,
``clozelab export`` and ``clozelab.load`` see the same names as an eager run (no ``_orig_mod.``).

Config keys (``conf/model/*.yaml``): ``compile`` (false | true), ``compile_mode`` (default |
reduce-overhead | max-autotune | max-autotune-no-cudagraphs), ``compile_dynamic`` (null: let
PyTorch decide after the first shape change | true | false), ``compile_backend`` (inductor, or
a debugging backend such as aot_eager / eager).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from clozelab.core.errors import config_error

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def layer_targets(name: str, stack: nn.Module) -> dict[str, nn.Module]:
    """Each layer of ``stack`` (its ``layers`` ModuleList) by name, or ``stack`` whole."""
    layers = getattr(stack, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return {f"{name}.layers.{i}": layer for i, layer in enumerate(layers)}
    return {name: stack}


def compile_targets(
    embedding: nn.Module, encoder: nn.Module, objectives: Mapping[str, nn.Module] | None = None
) -> dict[str, nn.Module]:
    """The modules ``model.compile`` compiles, by their name in the PretrainModule: the
    embedding, what the encoder's ``compile_targets`` hook names (each layer) and what each
    objective's names."""
    targets = {"embedding": embedding, **encoder.compile_targets()}  # Encoder hook
    for name, objective in (objectives or {}).items():
        for sub, module in objective.compile_targets().items():
            targets[f"objectives.{name}.{sub}"] = module
    return targets


def check_compile_settings(model_cfg: Mapping) -> bool:
    """Whether ``model.compile`` asks for compilation, after checking it is a boolean and, when
    it does, that ``model.compile_mode`` / ``compile_dynamic`` / ``compile_backend`` are valid:
    called when the config is composed (``validate_model``), before a tokenizer is trained."""
    wanted = model_cfg.get("compile", False)
    if wanted is None or isinstance(wanted, bool):
        if wanted:
            check_options(
                model_cfg.get("compile_mode", "default"),
                model_cfg.get("compile_dynamic"),
                model_cfg.get("compile_backend", "inductor"),
            )
        return bool(wanted)
    raise config_error(
        "model.compile",
        wanted,
        "must be true or false",
        "model.compile=true, with the backend in model.compile_backend (inductor, eager, ...) "
        "and the mode in model.compile_mode",
    )


def check_options(mode: str, dynamic: bool | None, backend: str) -> dict:
    """``torch.compile``'s keyword arguments for these ``model.compile_*`` values, checked."""
    if mode not in COMPILE_MODES:
        raise config_error(
            "model.compile_mode",
            mode,
            "unknown torch.compile mode",
            f"use one of {list(COMPILE_MODES)}",
        )
    if dynamic not in (None, True, False):
        raise config_error(
            "model.compile_dynamic",
            dynamic,
            "must be null, true or false",
            "use null (PyTorch decides)",
        )
    backends = torch._dynamo.list_backends(exclude_tags=())
    if backend not in backends:
        raise config_error(
            "model.compile_backend",
            backend,
            "unknown torch.compile backend",
            f"use inductor (or one of {sorted(backends)})",
        )
    options = {"backend": backend, "dynamic": dynamic}
    if backend == "inductor":
        options["mode"] = mode
    return options


def compile_components(
    embedding: nn.Module,
    encoder: nn.Module,
    mode: str = "default",
    dynamic: bool | None = None,
    backend: str = "inductor",
    objectives: Mapping[str, nn.Module] | None = None,
) -> list[str]:
    """Compile the embedding, each encoder layer and what ``objectives`` name in place; returns
    the compiled names.

    Compilation itself happens lazily, at the first forward call."""
    options = check_options(mode, dynamic, backend)
    targets = compile_targets(embedding, encoder, objectives)
    for module in targets.values():
        module.compile(**options)
    log.info(
        "model.compile: %s (%s, mode=%s, dynamic=%s)", ", ".join(targets), backend, mode, dynamic
    )
    return list(targets)


def apply_model_compile(
    embedding: nn.Module,
    encoder: nn.Module,
    model_cfg: Mapping,
    objectives: Mapping[str, nn.Module] | None = None,
) -> list[str]:
    """``compile_components`` as ``model.compile*`` asks; [] when ``model.compile`` is false."""
    if not check_compile_settings(model_cfg):
        return []
    return compile_components(
        embedding,
        encoder,
        mode=model_cfg.get("compile_mode", "default"),
        dynamic=model_cfg.get("compile_dynamic"),
        backend=model_cfg.get("compile_backend", "inductor"),
        objectives=objectives,
    )


def is_compiled(module: nn.Module) -> bool:
    """Was ``module`` compiled in place (``nn.Module.compile``)?"""
    return getattr(module, "_compiled_call_impl", None) is not None


__all__ = [
    "COMPILE_MODES",
    "apply_model_compile",
    "check_compile_settings",
    "compile_components",
    "compile_targets",
    "is_compiled",
    "layer_targets",
]
