"""MT-DNN multi-task fine-tuning (Liu et al. 2019, SPECS.md §20): task sampling, one shared body
with a head per task, the finetune command end to end (joint, refined, single-task baseline)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent / "tasks"))
from conftest import TINY_ARCH

from clozelab.core.errors import ClozelabError
from clozelab.finetune import finetune
from clozelab.tasks.base import task_for
from clozelab.training.evaluation import load_task
from clozelab.training.loading import load_backbone
from clozelab.training.multitask import sampling_shares, task_order, train_multitask

SIZES = {"big": 800, "mid": 200, "small": 40}


def test_proportional_sampling_runs_every_batch_once_per_epoch():
    generator = torch.Generator().manual_seed(0)
    order = task_order(SIZES, 32, 2 * 34, "proportional", 1.0, generator)
    assert Counter(order) == {"big": 50, "mid": 14, "small": 4}  # ceil(n / 32) per epoch, x2
    assert Counter(order[:34]) == {"big": 25, "mid": 7, "small": 2}  # the first epoch whole
    again = task_order(SIZES, 32, 68, "proportional", 1.0, torch.Generator().manual_seed(0))
    other = task_order(SIZES, 32, 68, "proportional", 1.0, torch.Generator().manual_seed(1))
    assert again == order != other  # shuffled, from the generator only


@pytest.mark.parametrize("temperature", [1.0, 2.0, 100.0])
def test_temperature_sampling_shares(temperature):
    shares = sampling_shares(SIZES, 32, "temperature", temperature)
    weights = {k: n ** (1 / temperature) for k, n in SIZES.items()}
    assert shares == pytest.approx({k: w / sum(weights.values()) for k, w in weights.items()})
    order = task_order(SIZES, 32, 20_000, "temperature", temperature,
                       torch.Generator().manual_seed(3))  # fmt: skip
    counts = Counter(order)
    for name, share in shares.items():
        assert abs(counts[name] / 20_000 - share) < 0.015, (name, counts)
    if temperature == 100.0:  # large T: close to uniform
        assert max(shares.values()) - min(shares.values()) < 0.03


def _toy_files(tmp_path: Path) -> dict:
    good = [f"good movie {i}" for i in range(12)]
    bad = [f"bad river {i}" for i in range(12)]
    sst = ["sentence\tlabel"] + [f"{t}\t1" for t in good] + [f"{t}\t0" for t in bad]
    sts = ["sentence1\tsentence2\tscore"] + [f"{t}\t{t}\t5.0" for t in good]
    sts += [f"{t}\tgood movie\t0.0" for t in bad]
    for name, rows in (("sst2", sst), ("stsb", sts)):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "train.tsv").write_text("\n".join(rows) + "\n", "utf-8")
        (tmp_path / name / "dev.tsv").write_text("\n".join(rows[:1] + rows[4:20]) + "\n", "utf-8")
    return {"sst2": {"path": str(tmp_path / "sst2")}, "stsb": {"path": str(tmp_path / "stsb")}}


@pytest.fixture
def tiny_tok(tmp_path_factory):
    from helpers import WORDS

    from clozelab.data.tokenizer import train_wordpiece

    text = [" ".join(WORDS)] * 3 + ["good bad movie river ."] * 3
    return str(train_wordpiece(text, 200, min_frequency=1).save(tmp_path_factory.mktemp("t")))


def test_one_shared_body_and_a_head_per_task(tmp_path, tiny_tok):
    paths = _toy_files(tmp_path)
    backbone = load_backbone("none", arch=OmegaConf.create(TINY_ARCH), tokenizer=tiny_tok)
    kinds = {n: task_for(OmegaConf.merge(load_task(n), paths[n], {"max_seq_length": 16}))
             for n in ("sst2", "stsb")}  # fmt: skip
    datas = {n: k.encode(k.read(None), backbone) for n, k in kinds.items()}
    models = {n: k.build_model(backbone, datas[n], mode="finetune", mix_layers=4,
                               layer_mix="average") for n, k in kinds.items()}  # fmt: skip
    assert models["sst2"].backbone is models["stsb"].backbone
    assert models["sst2"].output.out_features == 2 and models["stsb"].output.out_features == 1
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in models.items()}
    node = OmegaConf.create({"batch_size": 4, "epochs": 1, "lr": 1e-3, "sampling": "temperature",
                             "temperature": 1.0, "max_steps": 1})  # fmt: skip
    facts = train_multitask(models, datas, node, seed=0, pad_id=backbone.tokenizer.pad_id)
    (trained,) = facts["steps_per_task"]  # one step: one task's batch, one task's loss
    idle = next(n for n in models if n != trained)
    changed = {n: {k for k, v in m.state_dict().items() if not torch.equal(v, before[n][k])}
               for n, m in models.items()}  # fmt: skip
    assert any(k.startswith("backbone.") for k in changed[idle])  # the shared body moved
    assert any(k.startswith("output.") for k in changed[trained])
    assert not any(k.startswith("output.") for k in changed[idle])  # its head did not


def _compose(*overrides):
    from helpers import compose_config

    return compose_config(*overrides, name="finetune")


def _command(tmp_path, tok, *extra):
    paths = _toy_files(tmp_path)
    overrides = json.dumps(paths).replace('"', "")
    return _compose(
        "checkpoint=none", f"random_init.tokenizer={tok}", "model.hidden_size=32",
        "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
        "multitask.tasks=[sst2,stsb]", f"multitask.overrides={overrides}",
        "multitask.common={max_seq_length: 16, batch_size: 4, epochs: 2, lr: 1e-3}",
        "multitask.batch_size=4", "multitask.epochs=8", "multitask.lr=1e-3", "seeds=[1,2]",
        f"paths.output_dir={tmp_path / 'out'}", *extra,
    )  # fmt: skip


@pytest.mark.slow  # 2 seeds x 96 steps: ~3 min on the busy 2-core machine (seconds when idle)
def test_the_finetune_command_trains_tasks_together(tmp_path, tiny_tok):
    results = finetune(_command(tmp_path, tiny_tok))
    out = tmp_path / "out"
    saved = {n: json.loads((out / "eval" / f"{n}.json").read_text()) for n in ("sst2", "stsb")}
    assert saved["sst2"]["seeds"] == [1, 2] and saved["stsb"]["metric"] == "pearson"
    assert saved["sst2"]["protocol"]["multitask"]["tasks"] == ["sst2", "stsb"]
    assert results["sst2"]["value"] > 0.8 and results["stsb"]["value"] > 0.5  # toys are learnt
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["eval/sst2/accuracy"] == results[
        "sst2"]["value"]  # fmt: skip
    assert (out / "config.yaml").is_file()
    checkpoint = torch.load(out / "eval" / "multitask" / "seed-2.pt", map_location="cpu")
    assert checkpoint["tasks"] == ["sst2", "stsb"]
    state = checkpoint["state_dict"]
    assert "sst2.output.weight" in state and "stsb.output.weight" in state
    assert torch.equal(state["sst2.backbone.embedding.word_embeddings.weight"],
                       state["stsb.backbone.embedding.word_embeddings.weight"])  # fmt: skip
    steps = saved["sst2"]["runs"][0]["multitask"]["steps_per_task"]
    assert steps == {"sst2": 48, "stsb": 48}  # 6 batches each, 8 epochs


@pytest.mark.parametrize(
    "extra",
    [pytest.param(("multitask.refine=true",), marks=pytest.mark.slow), ("multitask.joint=false",)],
)
def test_refined_and_single_task_arms(tmp_path, tiny_tok, extra):
    finetune(_command(tmp_path, tiny_tok, *extra, "seeds=[1]", "multitask.epochs=2"))
    saved = json.loads((tmp_path / "out" / "eval" / "sst2.json").read_text())
    run = saved["runs"][0]
    if "multitask.refine=true" in extra:  # fine-tuned alone after the joint phase
        assert run["refine"]["steps"] == 12 and "multitask_metrics" in run
    else:  # the baseline never trains jointly and writes no multi-task checkpoint
        assert "multitask" not in run and run["steps"] == 12
        assert not (tmp_path / "out" / "eval" / "multitask").exists()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (("multitask.tasks=[sst2]",), "two or more"),
        (("multitask.tasks=[]",), "two or more"),  # not a silent single-task run of task=
        (("multitask.tasks=rte",), "two or more"),  # a name, not the list [r, t, e]
        (("multitask.sampling=sometimes",), "multitask.sampling"),
        (("multitask.temperature=0",), "multitask.temperature"),
        (("multitask.tasks=[sst2,mrpc]",), "multitask.overrides=.stsb.: not one of"),
    ],
)
def test_bad_multitask_settings_are_refused(tmp_path, tiny_tok, extra, match):
    with pytest.raises(ClozelabError, match=match):
        finetune(_command(tmp_path, tiny_tok, *extra))


@pytest.mark.parametrize(
    ("node", "key", "match"),
    [
        ("common", "max_seq_lenght", "multitask.common.max_seq_lenght=.*max_seq_length"),
        ("overrides.stsb", "epoch", "multitask.overrides.stsb.epoch=.*epochs"),
    ],
)
def test_misspelt_task_keys_are_refused(tmp_path, tiny_tok, node, key, match):
    """A misspelt key in ``multitask.common`` / ``multitask.overrides.NAME`` is refused before
    any data is read, not merged into the task as a new key nothing reads (the setting it
    meant silently keeping its default)."""
    from omegaconf import OmegaConf

    cfg = _command(tmp_path, tiny_tok)
    OmegaConf.set_struct(cfg, False)
    OmegaConf.update(cfg, f"multitask.{node}.{key}", 2)
    with pytest.raises(ClozelabError, match=match):
        finetune(cfg)


def test_mtdnn_trains_data_parallel_on_two_cpu_ranks(tmp_path, tiny_tok):
    """Two gloo ranks (set up as torchrun would) of ``clozelab finetune multitask.tasks=...``:
    the same task at every step (the order comes from the seed), each rank on its own examples
    of the task's global batch, identical weights afterwards (DDP averaged the gradients), and
    rank 0 alone writes the results and metrics.json."""
    from scale_worker import run_finetune_rank
    from test_ddp import _spawn

    out = tmp_path / "ranks"
    out.mkdir()
    cfg = _command(tmp_path, tiny_tok, "seeds=[1]", "multitask.epochs=2")
    _spawn((cfg, str(out)), deadline_s=900.0, worker=run_finetune_rank)

    states = [torch.load(out / f"mt{r}_seed1.pt") for r in (0, 1)]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    saved = json.loads((tmp_path / "out" / "eval" / "sst2.json").read_text())
    facts = saved["runs"][0]["multitask"]
    # 24 examples a task, 4 a rank: ceil(24 / 8) = 3 global batches a task and epoch, 2 epochs
    assert facts["steps"] == 12 and facts["steps_per_task"] == {"sst2": 6, "stsb": 6}
    batches = [torch.load(out / f"batches{r}.pt") for r in (0, 1)]
    assert len(batches[0]) == len(batches[1]) == 12  # the same number of batches on each rank
    for mine, theirs in zip(*batches):
        assert len(mine) == len(theirs) == 4 and not set(mine) & set(theirs)  # own examples
    writes = [json.loads((out / f"writes{r}.json").read_text()) for r in (0, 1)]
    assert sorted(writes[0]) == ["metrics.json", "sst2.json", "stsb.json"] and writes[1] == []
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["status"] == "completed"


@pytest.mark.slow  # the command starts a second CPU process (~1 min on the busy machine)
def test_finetune_devices_2_starts_its_second_rank(tmp_path, tiny_tok):
    """``devices=2``: the command's own process is rank 0 and starts rank 1; the joint run takes
    global batches of 2 x 4 examples and rank 0 returns and writes the results."""
    results = finetune(_command(tmp_path, tiny_tok, "seeds=[1]", "multitask.epochs=2",
                                "devices=2"))  # fmt: skip
    saved = json.loads((tmp_path / "out" / "eval" / "sst2.json").read_text())
    assert saved["runs"][0]["multitask"]["steps"] == 12  # ceil(24 / 8) x 2 tasks x 2 epochs
    assert results["sst2"]["value"] == saved["value"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["status"] == "completed"


def test_devices_must_be_a_positive_integer(tmp_path, tiny_tok):
    with pytest.raises(ClozelabError, match=r"devices=.?0.?: must be an integer >= 1.*Fix"):
        finetune(_command(tmp_path, tiny_tok, "devices=0"))
