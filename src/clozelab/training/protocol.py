"""What a run's numbers can be compared on: the training budget, model, data and evaluation suite
(``metrics.json["protocol"]``), and the config-group choices that name its setting."""

from __future__ import annotations

from omegaconf import DictConfig

MODEL_KEYS = ("num_layers", "hidden_size", "num_heads", "intermediate_size")


def hydra_choices() -> dict[str, str]:
    """The option picked in each config group (``corruption: span``, ``setting: mask_only``),
    Hydra's own groups left out; empty outside a Hydra run (a test calling ``pretrain(cfg)``)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: str(v) for k, v in choices.items() if v is not None and not k.startswith("hydra")}


def budget_kind(trainer: DictConfig) -> str:
    """The budgets that can end the run: "tokens" (compute-matched), "steps", "time", joined by
    "+" when several are set ("tokens+time"); "epochs" when none is."""
    steps = trainer.get("max_steps")
    active = [
        name
        for name, on in (
            ("tokens", trainer.get("max_tokens")),
            ("steps", steps is not None and steps > 0),
            ("time", trainer.get("max_time")),
        )
        if on
    ]
    return "+".join(active) or "epochs"


def protocol(cfg: DictConfig) -> dict:
    """The comparison protocol of a pre-training run, as recorded in its metrics.json."""
    trainer, data = cfg.trainer, cfg.data
    evaluation = cfg.get("eval") or {}
    suite = evaluation.get("suite")
    sweep_meta = cfg.get("sweep_meta") or {}
    choices = hydra_choices()
    return {
        "budget": budget_kind(trainer),
        "max_tokens": trainer.get("max_tokens"),
        "max_steps": trainer.get("max_steps"),
        "max_time": trainer.get("max_time"),
        "model": {"name": choices.get("model"), **{k: cfg.model.get(k) for k in MODEL_KEYS}},
        "data": {
            "corpus": str(data.get("corpus")),
            "instances": data.get("instances"),
            "max_seq_length": data.get("max_seq_length"),
            "batch_size": data.get("batch_size"),
        },
        "suite": suite,
        "eval_tasks": list(evaluation.get("tasks") or []) if suite else [],
        "eval_seeds": list(evaluation.get("seeds") or []) if suite else [],
        "eval_mode": evaluation.get("mode") if suite else None,
        "seed": cfg.get("seed"),
        "sweep": sweep_meta.get("name"),
        "choices": choices,
    }
