"""Validation aggregates are exact: every val/ value is what one forward pass over the whole
validation set as a single batch gives (token-weighted means, the objectives' own denominators),
and val/loss is the weighted sum of the objectives' exact losses, not a mean of batch totals."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from clozelab.core.batch import Batch
from clozelab.model.embeddings import BertEmbeddings
from clozelab.model.encoder import TransformerEncoder
from clozelab.objectives.mlm import MLM
from clozelab.objectives.nsp import NSP
from clozelab.pretrain import pretrain
from clozelab.training.module import PretrainModule

V, H, T = 200, 32, 16


def _module(objectives: dict) -> PretrainModule:
    torch.manual_seed(0)
    embedding = BertEmbeddings(V, H, max_position_embeddings=T, dropout=0.0)
    encoder = TransformerEncoder(H, 2, 4, 64, dropout=0.0, attention_dropout=0.0)
    return PretrainModule(embedding, encoder, objectives, optimizer=None).eval()


def _batches(sizes=(2, 7, 3), rates=(0.6, 0.1, 0.3)) -> list[dict]:
    """Batches of different sizes and masking densities: batch means and token means differ."""
    g = torch.Generator().manual_seed(0)
    out = []
    for b, rate in zip(sizes, rates, strict=True):
        ids = torch.randint(5, V, (b, T), generator=g)
        mask = (torch.arange(T) < torch.randint(6, T + 1, (b, 1), generator=g)).long()
        pick = (torch.rand(ids.shape, generator=g) < rate) & mask.bool()
        pick[:, 1] = True  # every row has a target
        out.append(Batch(input_ids=ids * mask, attention_mask=mask,
                         token_type_ids=torch.zeros_like(ids),
                         mlm_labels=torch.where(pick, ids, -100),
                         next_sentence_label=torch.randint(0, 2, (b,), generator=g)))  # fmt: skip
    return out


def _validate(module: PretrainModule, batches: list[dict]) -> dict[str, float]:
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.validate(module, loader, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.parametrize("names", [("mlm",), ("mlm", "nsp")])
def test_val_values_equal_one_pass_over_the_whole_set(names):
    heads = {"mlm": lambda: MLM(H, V), "nsp": lambda: NSP(H)}
    module = _module({name: heads[name]() for name in names})
    batches = _batches()
    val = _validate(module, batches)
    whole = Batch({k: torch.cat([b[k] for b in batches]) for k in batches[0]})
    with torch.no_grad():
        total, logs, _ = module(whole)
    for key, value in logs.items():
        assert val[f"val/{key}"] == pytest.approx(float(value), rel=1e-6, abs=1e-7), key
    assert val["val/loss"] == pytest.approx(float(total), rel=1e-6)
    if names == ("mlm",):  # the symptom: a batch mean of the totals differed in the 4th digit
        assert val["val/loss"] == pytest.approx(val["val/mlm_loss"], rel=1e-12)
        with torch.no_grad():
            batch_mean = sum(float(module(b)[0]) for b in batches) / len(batches)
        assert abs(batch_mean - val["val/loss"]) > 1e-4  # these batches do tell the two apart
    else:
        expected = val["val/mlm_loss"] + val["val/nsp_loss"]
        assert val["val/loss"] == pytest.approx(expected, rel=2e-7)  # logged as float32


@pytest.mark.parametrize("experiment", ["electra", "spanbert", "bert"])
def test_each_objectives_loss_is_its_terms(compose_pretrain, experiment, text_corpus):
    """What validation rebuilds a loss from (``ObjectiveOutput.terms``) gives the loss itself."""
    from clozelab.data.tokenizer import train_wordpiece
    from clozelab.training.components import build_components

    cfg = compose_pretrain(f"experiment={experiment}")
    tokenizer = train_wordpiece(text_corpus.read_text().split("\n"), 400)
    embedding, encoder, objectives, _ = build_components(cfg, tokenizer)
    module = PretrainModule(embedding, encoder, objectives, optimizer=None).eval()
    batch = _batches(sizes=(4,), rates=(0.3,))[0]
    if experiment == "spanbert":
        batch["span_bounds"] = torch.tensor([[[2, 4], [-1, -1]]] * 4)
        batch["special_tokens_mask"] = torch.zeros_like(batch["input_ids"])
        del batch["next_sentence_label"]
    with torch.no_grad():
        hidden = module._encode(batch)
        for name, objective in objectives.items():
            prepared = batch
            prepare = getattr(objective, "prepare_inputs", None)
            if prepare is not None:
                prepared = prepare(batch, embedding)
                hidden = module._encode(prepared)
            out = objective(hidden, prepared, embedding)
            rebuilt = sum(c * float(out.logs[k]) for k, c in out.terms().items())
            assert rebuilt == pytest.approx(float(out.loss), rel=1e-6), name
            assert float(out.logs[out.loss_key]) == pytest.approx(float(out.loss), rel=1e-6)


def test_mlm_only_run_reports_val_loss_equal_to_val_mlm_loss(compose_pretrain):
    metrics = pretrain(compose_pretrain("objective=[mlm]", "trainer.max_steps=3",
                                        "trainer.limit_val_batches=3"))  # fmt: skip
    assert metrics["val/loss"] == pytest.approx(metrics["val/mlm_loss"], rel=1e-12)
    assert metrics["initial/val/loss"] == pytest.approx(metrics["initial/val/mlm_loss"], rel=1e-12)
