"""Continual multi-task pre-training (ERNIE 2.0, SPECS.md §20): a schedule introduces objectives
stage by stage and keeps the earlier ones; bad schedules are refused at compose time."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from clozelab.core.errors import ClozelabError
from clozelab.pretrain import pretrain
from clozelab.training.module import PretrainModule
from clozelab.training.schedule import Schedule
from clozelab.training.validate import validate_pretrain

NAMES = ["mlm", "token_document", "sentence_distance", "sentence_reorder"]
STAGES = [{"until_steps": 2, "objectives": ["mlm"]},
          {"until_steps": 4, "objectives": ["token_document"]},
          {"objectives": ["sentence_distance", "sentence_reorder"]}]  # fmt: skip


def _schedule(stages=STAGES, mix="round_robin", names=NAMES):
    return Schedule.from_config(OmegaConf.create({"mix": mix, "stages": stages}), names)


def test_stages_introduce_and_keep_objectives():
    joint = _schedule(mix="joint")
    assert [joint.step(s, 0) for s in range(6)] == [
        (0, ("mlm",)), (0, ("mlm",)),
        (1, ("mlm", "token_document")), (1, ("mlm", "token_document")),
        (2, tuple(NAMES)), (2, tuple(NAMES)),
    ]  # fmt: skip
    robin = _schedule()
    assert [robin.step(s, 0)[1][0] for s in range(8)] == [
        "mlm",
        "mlm",
        "mlm",
        "token_document",
        "mlm",
        "token_document",
        "sentence_distance",
        "sentence_reorder",
    ]  # step s trains active objective s mod n
    assert [robin.task_id(n) for n in NAMES] == [0, 1, 2, 3]
    tokens = _schedule([{"until_tokens": 100, "objectives": ["mlm"]},
                        {"objectives": NAMES[1:]}])  # fmt: skip
    assert tokens.stage_at(50, 99) == 0 and tokens.stage_at(1, 100) == 1


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        ([{"until_steps": 2, "objectives": ["mlm"]}, {"objectives": ["nsp", *NAMES[1:]]}],
         r"schedule.stages\[1\].objectives=.?nsp.?: not an objective of this run"),
        ([{"until_steps": 4, "objectives": ["mlm"]}, {"until_steps": 3, "objectives": NAMES[1:3]},
          {"objectives": NAMES[3:]}], "stages out of order"),
        ([{"objectives": ["mlm"]}, {"objectives": NAMES[1:]}], "only the last stage"),
        ([{"until_steps": 2, "objectives": ["mlm"]}, {"objectives": NAMES[1:3]}],
         "sentence_reorder.*never trains"),
        ([{"until_steps": 2, "objectives": ["mlm"]}, {"until_tokens": 9, "objectives": NAMES[1:2]},
          {"objectives": NAMES[2:]}], "mixes steps and tokens"),
        ([{"until_steps": 2, "objectives": ["mlm"]}, {"objectives": NAMES}], "already introduced"),
    ],
)  # fmt: skip
def test_bad_schedules_name_the_key_and_the_fix(stages, match):
    with pytest.raises(ClozelabError, match=match) as error:
        _schedule(stages)
    assert "Fix:" in str(error.value)


ERNIE2 = ("experiment=ernie2", "schedule.stages.0.until_steps=2", "schedule.stages.1.until_steps=4",
          "corruption.level_probs.phrase=0.0", "corruption.level_probs.basic=0.7",
          "trainer.limit_val_batches=1", "initial_validation=false")  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (("trainer.max_steps=4",), r"trainer.max_steps=.?4.*stages\[2\] starts at steps 4"),
        (("embedding.num_tasks=3",), "embedding.num_tasks=.?3"),
        (("schedule.mix=joint",), "schedule.mix=.joint.*round_robin"),
        (("schedule.mix=sometimes",), "schedule.mix"),
        (("objective=[mlm,capitalization,token_document,sentence_distance]",),
         "sentence_reorder.*not an objective of this run"),
    ],
)  # fmt: skip
def test_the_recipe_refuses_impossible_schedules(compose_pretrain, overrides, match):
    with pytest.raises(ClozelabError, match=match):
        validate_pretrain(compose_pretrain(*ERNIE2, *overrides))


def test_a_scheduled_run_trains_the_stage_objectives(compose_pretrain, tmp_path, monkeypatch):
    """End to end (experiment=ernie2, tiny): which objectives each step ran, the stage log, and
    the heads of objectives not yet introduced untouched until their stage."""
    ran: dict[int, list[str]] = {}

    def on_train_batch_end(self, outputs, batch, batch_idx):
        ran[self.global_step - 1] = sorted(self._objective_losses)

    monkeypatch.setattr(PretrainModule, "on_train_batch_end", on_train_batch_end, raising=False)
    cfg = compose_pretrain(*ERNIE2, "trainer.max_steps=7", "schedule.mix=joint",
                           "embedding=bert", "trainer.val_check_interval=7")  # fmt: skip
    metrics = pretrain(cfg)
    assert metrics["status"] == "completed" and metrics["train/stage"] == 2.0
    first, second, third = (
        ["mlm"],
        ["capitalization", "mlm", "token_document"],
        sorted(
            ["mlm", "capitalization", "token_document", "sentence_distance", "sentence_reorder"]
        ),
    )
    assert ran == {0: first, 1: first, 2: second, 3: second, 4: third, 5: third, 6: third}
    for key in (
        "val/sentence_reorder_loss",
        "val/capitalization_acc",
        "val/token_document_loss",
        "train/sentence_distance_loss",
    ):
        assert key in metrics, key  # every objective validated, the late ones trained


def test_round_robin_rows_hold_window_means_never_stale_values(
    compose_pretrain, tmp_path, monkeypatch
):
    """A round-robin run's CSV: every 2 steps one row of objective logs, each the mean over the
    window's steps on which its objective ran, blank for an objective that did not run in the
    window (it used to repeat its last value), plus each objective's cumulative step count."""
    import csv

    ran: dict[int, dict[str, float]] = {}

    def on_train_batch_end(self, outputs, batch, batch_idx):
        losses = self._objective_losses
        ran[self.global_step - 1] = {k: float(v.detach()) for k, v in losses.items()}

    monkeypatch.setattr(PretrainModule, "on_train_batch_end", on_train_batch_end, raising=False)
    cfg = compose_pretrain(*ERNIE2, "trainer.max_steps=7", "trainer.log_every_n_steps=2",
                           "trainer.val_check_interval=7")  # fmt: skip
    metrics = pretrain(cfg)
    with open(tmp_path / "run" / "csv" / "metrics.csv", newline="") as handle:
        rows = {int(r["step"]): r for r in csv.DictReader(handle) if r.get("train/mlm_steps")}
    assert sorted(rows) == [1, 3, 5]  # log_every_n_steps=2: after steps 1, 3 and 5
    assert [list(ran[s]) for s in range(7)] == [["mlm"], ["mlm"], ["token_document"], ["mlm"],
                                                ["sentence_reorder"], ["mlm"],
                                                ["capitalization"]]  # fmt: skip
    steps: dict[str, int] = {}
    for end, row in rows.items():
        window = [ran[s] for s in (end - 1, end)]
        for name in ("mlm", "token_document", "sentence_reorder", "capitalization"):
            losses = [step[name] for step in window if name in step]
            steps[name] = steps.get(name, 0) + len(losses)
            cell = row.get(f"train/{name}_loss", "")  # capitalization: no column
            if losses:
                assert float(cell) == pytest.approx(sum(losses) / len(losses), rel=1e-5)
            else:
                assert cell == "", (end, name, cell)  # not run in the window: no value at all
            count = str(float(steps[name])) if steps[name] else ""
            assert row.get(f"train/{name}_steps", "") == count
    assert metrics["train/capitalization_loss"] == pytest.approx(ran[6]["capitalization"])


def test_untrained_objectives_of_an_early_last_stage():
    schedule = _schedule()
    assert schedule.untrained(0) == ("token_document", "sentence_distance", "sentence_reorder")
    assert schedule.untrained(1) == ("sentence_distance", "sentence_reorder")
    assert schedule.untrained(2) == ()


def test_a_token_budget_ending_before_the_last_stage_is_reported(compose_pretrain, caplog):
    """Bounds in steps, budget in tokens (compose time cannot tell when the tokens run out): a
    run that ends in the first stage says which objectives never trained, in the log and in
    metrics.json, instead of reporting val scores of untrained heads without a word."""
    cfg = compose_pretrain(*ERNIE2, "trainer.max_steps=-1", "trainer.max_tokens=300",
                           "embedding=bert", "schedule.mix=joint")  # fmt: skip
    with caplog.at_level("WARNING", logger="clozelab.pretrain"):
        metrics = pretrain(cfg)
    assert metrics["status"] == "completed" and metrics["train/stage"] == 0.0
    late = ["capitalization", "token_document", "sentence_distance", "sentence_reorder"]
    assert metrics["schedule_untrained"] == late
    assert "never trained" in caplog.text and "trainer.max_tokens" in caplog.text
