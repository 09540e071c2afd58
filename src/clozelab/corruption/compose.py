"""Composition: a list of corruptions applied in order with a shared budget (DESIGN.md §3).

Each step sees the output of the previous one. Positions an earlier step corrupted are carried in
``corrupted_mask`` and are no candidates for later steps (``candidates`` excludes them), so the
steps share one budget of positions and never corrupt the same token twice.

The shared budget: every ``rate`` is a fraction of the *original* sequence, and the total is their
sum (``[mask 0.12, delete 0.03]`` corrupts 15% of the candidate tokens, in expectation or exactly as
the steps' budgets are). A step whose rate is drawn over its own candidates (``bernoulli`` budgets,
SpanBERT's ``ceil(rate * n)``, ERNIE) would otherwise take its rate of what the earlier steps left,
so Compose rescales it to ``rate / (1 - earlier rates)``. A step with BERT's exact budget
(``budget=exact``, ALBERT n-grams) already counts ``round(rate * n_real)`` over the whole row and is
left as is. ``Reorder`` moves tokens whatever an earlier step did (masks travel with their tokens):
it is not part of the budget, and its moved tokens may overlap earlier corruptions. The rescaling
sets the step's ``rate`` attribute (the configured rates are ``Compose.rates``), so a step object
belongs to one Compose; with ``prediction_rate`` set, a rescaled step's prediction rate is also
relative to its remaining candidates.

Targets accumulate: ``mlm_labels`` of earlier steps are kept, ``replaced_mask`` is OR-ed,
deletion and reordering move every per-token tensor with its token, and
``span_bounds`` is recomputed from the final ``corrupted_mask``.

Config::

    _target_: clozelab.corruption.compose.Compose
    _recursive_: false        # the steps are built here, with the tokenizer's ids
    steps:
      - {_target_: clozelab.corruption.masking.UnitMasking, unit: whole_word, rate: 0.12}
      - {_target_: clozelab.corruption.delete.Deletion, rate: 0.03}
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from clozelab.core.errors import config_error
from clozelab.corruption.base import Corruption
from clozelab.corruption.runtime import RUNTIME_INPUTS, restrict


class Compose(Corruption):
    runtime_inputs = frozenset(RUNTIME_INPUTS)  # handed on to the steps that declare them
    produces = ("input_ids", "corrupted_mask")  # guaranteed; see produces_for

    def __init__(self, steps, **runtime) -> None:
        from omegaconf import DictConfig, OmegaConf

        from clozelab.core.config import build, component_class

        if not steps:
            raise config_error(
                "corruption.steps",
                steps,
                "needs at least one corruption",
                "list the steps, e.g. steps=[{_target_: ...UnitMasking}, ...]",
            )
        built = []
        for i, step in enumerate(steps):
            if isinstance(step, Corruption):
                built.append(step)
                continue
            node = step if isinstance(step, DictConfig) else OmegaConf.create(dict(step))
            cls = component_class(node, f"corruption.steps[{i}]", Corruption)
            built.append(build(node, f"corruption.steps[{i}]", **restrict(cls, runtime)))
        self.steps = built
        rates = [step.budget_rate() for step in built]
        if sum(rates) >= 1.0:
            raise config_error(
                "corruption.steps",
                rates,
                "the steps' rates share one budget and sum to >= 1",
                "lower the rates so they add up to less than 1",
            )
        self.rates = rates  # as configured: fractions of the original sequence
        earlier = 0.0
        for step, rate in zip(built, rates):
            if rate and step.rate_of_remaining():
                step.rate = rate / (1.0 - earlier)
            earlier += rate

    @classmethod
    def produces_for(cls, node) -> tuple[str, ...]:
        """The batch keys a configured composition produces (union of its steps')."""
        from clozelab.core.config import component_class

        keys = list(cls.produces)
        for i, step in enumerate(node.get("steps", ())):
            keys += component_class(step, f"corruption.steps[{i}]", Corruption).produces_for(step)
        return tuple(dict.fromkeys(keys))

    @classmethod
    def check_keys(
        cls, node, provided: set[str], read: set[str] | None = None, key: str = "corruption"
    ) -> None:
        """Each step against the data's keys and those the steps before it produce (and, given
        ``read``, against what the run reads)."""
        from clozelab.core.config import component_class

        provided = set(provided) | set(cls.produces)
        for i, step in enumerate(node.get("steps", ())):
            step_key = f"{key}.steps[{i}]"
            step_cls = component_class(step, step_key, Corruption)
            step_cls.check_keys(step, provided, read, step_key)
            provided |= set(step_cls.produces_for(step))

    def output_length(self, n_tokens: int, n_special: int) -> int:
        for step in self.steps:
            n_tokens = step.output_length(n_tokens, n_special)
        return n_tokens

    def __call__(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        out = dict(batch)
        if "corrupted_mask" not in out:
            out["corrupted_mask"] = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        for step in self.steps:
            out = step(out, generator)
        if "span_bounds" in out:
            from clozelab.corruption.units import span_bounds

            out["span_bounds"] = span_bounds(out["corrupted_mask"])
        return out

    def __repr__(self) -> str:
        return f"Compose({self.steps!r})"
