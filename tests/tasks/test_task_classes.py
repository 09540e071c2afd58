"""Task kinds are classes named by ``_target_``: every shipped task config builds its class, and a
config without a class, or with a ``kind`` its class is not, is refused with the fix."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from clozelab.core.config import conf_dir
from clozelab.core.errors import ClozelabError
from clozelab.tasks.base import Task, task_for
from clozelab.training.evaluation import load_task

TASKS = sorted(p.stem for p in (conf_dir() / "task").glob("*.yaml"))


@pytest.mark.parametrize("name", TASKS)
def test_every_task_config_names_its_task_class(name):
    node = load_task(name)
    task = task_for(node)
    assert isinstance(task, Task) and type(task) is not Task
    assert "kind" not in node, "the class is the kind: no kind string beside _target_"
    assert task.default_metrics, "the main metric comes from the class"


def test_a_task_without_a_class_is_refused_with_the_fix():
    node = OmegaConf.create({"name": "mine", "format": "csv"})
    with pytest.raises(ClozelabError, match=r"task._target_.*ClassificationTask"):
        task_for(node)


def test_a_kind_string_that_contradicts_the_class_is_refused():
    node = OmegaConf.merge(load_task("custom"), {"kind": "regression"})
    with pytest.raises(ClozelabError, match=r"task.kind.*'classification'.*RegressionTask"):
        task_for(node)
    same = OmegaConf.merge(load_task("custom"), {"kind": "classification"})
    assert task_for(same).kind == "classification"
