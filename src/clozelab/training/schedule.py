"""Continual multi-task pre-training: ERNIE 2.0's sequential multi-task learning (SPECS.md §20).

``schedule.stages`` introduces the run's objectives stage by stage; a stage trains the objectives
it introduces **and** every earlier one, never the new ones alone::

    schedule:
      mix: round_robin              # round_robin: one objective per step | joint: all, summed
      stages:
        - {until_steps: 300, objectives: [mlm]}
        - {until_steps: 600, objectives: [capitalization, token_document]}
        - {objectives: [sentence_distance, sentence_reorder]}   # the last: to the end of the run

A stage lasts while the optimizer steps done (``until_steps``) or the tokens seen
(``until_tokens``) are below its bound; every bounded stage uses the same unit, bounds increase,
and the last stage has none. Both counters travel in the checkpoint, so a resumed run is in the
same stage at the same step. ``mix=round_robin`` (ERNIE 2.0: each task gets a share of the
stage's iterations) trains the stage's objectives in turn, one per step (step s trains active
objective s mod n); ``joint`` sums all of them every step, like MLM + NSP.

Task ids (for ``embedding=task``): each objective's position in the order of introduction; a
round-robin step feeds its objective's id. ``joint`` steps run several tasks on one input, so they
have no single task id and task embeddings are refused with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from clozelab.core.errors import check_choice, config_error

MIXES = ("round_robin", "joint")
UNITS = ("until_steps", "until_tokens")


@dataclass(frozen=True)
class Schedule:
    """Stages of introduced objectives, the bound of each (None: the last), and the mix."""

    stages: tuple[tuple[str, ...], ...]
    bounds: tuple[int | None, ...]
    unit: str  # "steps" or "tokens"
    mix: str = "round_robin"

    @classmethod
    def from_config(cls, node, objectives) -> Schedule | None:
        """The schedule of config ``schedule`` (None when it is null) after checking it against
        the run's ``objectives`` (the names of ``objective=[...]``)."""
        if node is None:
            return None
        mix = node.get("mix", "round_robin")
        check_choice(mix, "schedule.mix", MIXES, "set schedule.mix=round_robin (ERNIE 2.0)")
        stages = list(node.get("stages") or [])
        if not stages:
            raise config_error(
                "schedule.stages",
                stages,
                "no stage given",
                "list stages, e.g. [{until_steps: 100, objectives: [mlm]}, {objectives: [sop]}]",
            )
        names, bounds, units, seen = [], [], set(), {}
        for i, stage in enumerate(stages):
            names.append(_introduced(i, stage, objectives, seen))
            unit, bound = _bound(i, stage, last=i == len(stages) - 1)
            if bound is not None and bounds and bound <= bounds[-1]:
                raise config_error(
                    f"schedule.stages[{i}].{unit}",
                    bound,
                    f"stages out of order: it ends before the stage before it ({bounds[-1]})",
                    "give each stage a larger bound than the one before",
                )
            if bound is not None:
                units.add(unit)
            bounds.append(bound)
        if len(units) > 1:
            raise config_error(
                "schedule.stages",
                sorted(units),
                "mixes steps and tokens",
                "bound every stage with until_steps, or every one with until_tokens",
            )
        never = [name for name in objectives if name not in seen]
        if never:
            raise config_error(
                "schedule.stages",
                never[0],
                f"objective {never[0]!r} is selected but no stage introduces it, so it never "
                "trains",
                f"add {never[0]} to a stage's objectives, or drop it from objective=[...]",
            )
        unit = "tokens" if units == {"until_tokens"} else "steps"
        return cls(tuple(names), tuple(bounds), unit, mix)

    @property
    def order(self) -> tuple[str, ...]:
        """Every objective in the order of introduction (its index is its task id)."""
        return tuple(name for stage in self.stages for name in stage)

    def stage_at(self, steps: int, tokens: int) -> int:
        """The stage of the step that starts after ``steps`` optimizer steps and ``tokens``
        tokens seen."""
        done = tokens if self.unit == "tokens" else steps
        for i, bound in enumerate(self.bounds):
            if bound is None or done < bound:
                return i
        return len(self.stages) - 1  # past the last bound (a budget longer than the stages)

    def active(self, stage: int) -> tuple[str, ...]:
        """The objectives stage ``stage`` trains: its own and every earlier stage's."""
        return tuple(name for s in self.stages[: stage + 1] for name in s)

    def untrained(self, last_stage: int) -> tuple[str, ...]:
        """The objectives of the stages after ``last_stage``, the stage of a run's last step:
        those it never trained (a token budget can end a run before a bound in steps)."""
        return self.order[len(self.active(last_stage)) :]

    def step(self, steps: int, tokens: int) -> tuple[int, tuple[str, ...]]:
        """(stage, the objectives this step trains): all active ones (``joint``) or active
        objective ``steps mod n`` (``round_robin``)."""
        stage = self.stage_at(steps, tokens)
        active = self.active(stage)
        if self.mix == "joint":
            return stage, active
        return stage, (active[steps % len(active)],)

    def task_id(self, name: str) -> int:
        return self.order.index(name)

    def check_budget(self, max_steps: int | None, max_tokens: int | None) -> None:
        """Refuse a stage that would start after the run's budget ends (it would never train)."""
        budget = max_tokens if self.unit == "tokens" else max_steps
        if budget is None or budget <= 0:
            return
        for i, bound in enumerate(self.bounds[:-1]):
            if bound >= budget:
                key = "trainer.max_tokens" if self.unit == "tokens" else "trainer.max_steps"
                raise config_error(
                    key,
                    budget,
                    f"schedule.stages[{i + 1}] starts at {self.unit} {bound}, after the run ends: "
                    f"{list(self.stages[i + 1])} would never train",
                    f"raise {key} above {bound} or lower schedule.stages[{i}]'s bound",
                )


def _introduced(i: int, stage, objectives, seen: dict[str, int]) -> tuple[str, ...]:
    """The objectives stage ``i`` introduces, checked against the run's and the earlier stages'
    (``seen``: name -> stage, updated)."""
    key = f"schedule.stages[{i}]"
    extra = sorted(set(stage) - {"objectives", *UNITS})
    if extra:
        raise config_error(
            f"{key}.{extra[0]}",
            stage[extra[0]],
            "unknown stage key",
            f"a stage has objectives and one of {list(UNITS)}",
        )
    introduced = list(stage.get("objectives") or [])
    if not introduced:
        raise config_error(
            f"{key}.objectives",
            introduced,
            "the stage introduces no objective",
            "name at least one objective of objective=[...]",
        )
    for name in introduced:
        if name not in objectives:
            raise config_error(
                f"{key}.objectives",
                name,
                f"not an objective of this run (objective={list(objectives)})",
                f"add it: objective=[{','.join([*objectives, str(name)])}], or fix the name",
            )
        if name in seen:
            raise config_error(
                f"{key}.objectives",
                name,
                f"already introduced by schedule.stages[{seen[name]}]; a stage keeps every "
                "earlier objective",
                "list each objective in one stage only",
            )
        seen[name] = i
    return tuple(introduced)


def _bound(i: int, stage, last: bool) -> tuple[str, int | None]:
    """(its key, the bound) of stage ``i``; only the ``last`` stage may have none."""
    key = f"schedule.stages[{i}]"
    given = [u for u in UNITS if stage.get(u) is not None]
    if len(given) > 1:
        raise config_error(key, dict(stage), "gives both until_steps and until_tokens", "keep one")
    if not given:
        if not last:
            raise config_error(
                f"{key}.until_steps",
                None,
                "only the last stage may run to the end of the run",
                f"give {key} an until_steps (or until_tokens) bound",
            )
        return UNITS[0], None
    bound = stage.get(given[0])
    if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
        raise config_error(f"{key}.{given[0]}", bound, "must be an integer >= 1", "e.g. 1000")
    return given[0], bound
