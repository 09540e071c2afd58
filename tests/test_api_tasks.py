"""``clozelab.load`` of ERNIE models: ERNIE 2.0's task ids through ``encode``, ``mlm_logits``,
``nsp_logits`` and ``embed`` (the embedding's own forward at those ids, HF ERNIE's outputs at its
``task_type_ids``), refused with what to do by a model without a task table or outside the table;
what an ERNIE directory lacks is said as ERNIE's, not BERT's (random-init small HF models saved to
a tmp dir; a real ERNIE 2.0 run: tests/test_export_ernie2.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import clozelab
from clozelab.core.errors import ClozelabError
from clozelab.data.tokenizer import train_wordpiece

transformers = pytest.importorskip("transformers")

H, TASKS, T = 16, 4, 9
TOL = 1e-4
WORDS = [f"w{i}" for i in range(30)]


def _tokenizer():
    texts = [" ".join(WORDS[i : i + 10]) for i in range(20)] * 3
    return train_wordpiece(texts, 120)


def _hf_dir(path: Path, family: str = "ernie", heads: str = "ForPreTraining", **config):
    """A random-init small HF ``family`` model (weights moved off their init), saved with a
    clozelab tokenizer; returns the HF model in eval mode."""
    tokenizer = _tokenizer()
    sizes = dict(vocab_size=tokenizer.vocab_size, hidden_size=H, num_hidden_layers=2,
                 num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=32)  # fmt: skip
    if family == "ernie":
        sizes.update(use_task_id=True, task_type_vocab_size=TASKS)
    cls = {"ernie": "Ernie", "bert": "Bert"}[family]
    hf_config = getattr(transformers, f"{cls}Config")(**{**sizes, **config})
    torch.manual_seed(0)
    hf = getattr(transformers, f"{cls}{heads}")(hf_config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(path)
    tokenizer.save(path)
    return hf


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 40, (3, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    return ids, mask, types


def _hf_tasks(task_ids):
    """HF's ``task_type_ids`` [B, T] for our [B] task ids."""
    return task_ids[:, None].expand(-1, T)


def test_encode_at_task_ids_is_the_embeddings_own_forward_and_hf_ernies(tmp_path):
    hf = _hf_dir(tmp_path / "ernie")
    model = clozelab.load(tmp_path / "ernie")
    ids, mask, types = _batch()
    real = mask.bool()
    states = {}
    with torch.no_grad():
        for task in (0, 2):
            full = torch.full((3,), task)
            got = model.encode(ids, mask, types, task_ids=full)
            x = model.embedding(ids, types, task_ids=full)  # the embedding's own forward
            ref = model.encoder(x, mask, output_hidden_states=True)
            for ours, theirs in zip(got.hidden_states, ref.hidden_states, strict=True):
                assert torch.equal(ours, theirs)
            one_int = model.encode(ids, mask, types, task_ids=task).last_hidden_state
            assert torch.equal(one_int, got.last_hidden_state)  # one int: every sequence
            states[task] = got.last_hidden_state
            theirs = hf(ids, mask, types, task_type_ids=_hf_tasks(full))
            logits = model.mlm_logits(ids, mask, types, task_ids=full)
            assert (logits - theirs.prediction_logits)[real].abs().max() <= TOL
            nsp = model.nsp_logits(ids, mask, types, task_ids=full)
            assert (nsp - theirs.seq_relationship_logits).abs().max() <= TOL
        default = model.encode(ids, mask, types).last_hidden_state
        per_token = torch.arange(3 * T).reshape(3, T) % TASKS
        theirs = hf(ids, mask, types, task_type_ids=per_token).prediction_logits
        called = model(ids, mask, types, task_ids=per_token).last_hidden_state  # forward
        encoded = model.encode(ids, mask, types, per_token).last_hidden_state
        mixed = model.mlm_logits(ids, mask, types, task_ids=per_token)
    assert torch.equal(default, states[0])  # no task ids: task 0
    assert not torch.allclose(states[0][real], states[2][real], atol=1e-3)
    assert (mixed - theirs)[real].abs().max() <= TOL
    assert torch.equal(called, encoded)


def test_embed_at_a_task_encodes_every_text_at_it(tmp_path):
    _hf_dir(tmp_path / "ernie")
    model = clozelab.load(tmp_path / "ernie")
    texts = ["w1 w2 w3", "w4 w5"]
    with torch.no_grad():
        at0, at0_default, at3 = (model.embed(texts, task_id=t) for t in (0, None, 3))
        tok = clozelab.load_tokenizer(tmp_path / "ernie")
        batch = tok([texts[0]], return_tensors="pt")
        state = model.encode(**batch, task_ids=3).last_hidden_state[0, 1:-1].mean(0)
    assert torch.equal(at0, at0_default) and not torch.allclose(at0, at3, atol=1e-3)
    torch.testing.assert_close(at3[0], state, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("family", "config"), [("bert", {}), ("ernie", {"use_task_id": False})], ids=["bert", "ernie"]
)
def test_task_ids_for_a_model_without_a_task_table_are_refused(tmp_path, family, config):
    _hf_dir(tmp_path / family, family, **config)
    model = clozelab.load(tmp_path / family)
    ids, mask, types = _batch()
    message = (
        r"^task_ids=\[1, 1, 1\]: .*this model's embedding \(BertEmbeddings\) has no task table"
        r".*Fix: leave task_ids out for this model.*embedding=task.*use_task_id: true"
    )
    for method in (model.encode, model.mlm_logits, model.nsp_logits):
        with pytest.raises(ClozelabError, match=message):
            method(ids, mask, types, task_ids=torch.ones(3, dtype=torch.long))
    with pytest.raises(ClozelabError, match=r"^task_ids=2: .*no task table"):
        model.embed(["w1 w2"], task_id=2)
    assert model.encode(ids, mask, types).last_hidden_state.shape == (3, T, H)


@pytest.mark.parametrize(
    ("task_ids", "message"),
    [
        (TASKS, rf"^task_ids={TASKS}: outside the task table of {TASKS} rows \(ids 0..3\)"),
        (torch.tensor([0, -1, 2]), r"^task_ids=-1: outside the task table of 4 rows"),
        (torch.full((3, T), TASKS + 2), r"^task_ids=6: outside the task table"),
        (torch.zeros(3), r"^task_ids=torch.float32: task ids are integers"),
        (torch.zeros(2, dtype=torch.long),
         r"^task_ids='shape \[2\]': input_ids are \[3, 9\]\. Fix: give one task id per sequence "
         r"\[3\], one per token \[3, 9\], or one int"),
        (torch.zeros(3, T + 1, dtype=torch.long),
         r"^task_ids='shape \[3, 10\]'.*per token \[3, 9\]"),
    ],
    ids=["int", "negative", "per_token", "float", "batch_size", "length"],
)  # fmt: skip
def test_task_ids_outside_the_table_or_the_batch_are_refused(tmp_path, task_ids, message):
    _hf_dir(tmp_path / "ernie")
    model = clozelab.load(tmp_path / "ernie")
    ids, mask, types = _batch()
    if "shape" not in message:
        message += r".*Fix: give task ids 0..num_tasks-1: 0 is the default"
    with pytest.raises(ClozelabError, match=message):
        model.mlm_logits(ids, mask, types, task_ids=task_ids)


@pytest.mark.parametrize(
    ("family", "name"), [("ernie", "Ernie"), ("bert", "Bert")], ids=["ernie", "bert"]
)
def test_a_missing_head_names_the_loaded_family(tmp_path, family, name):
    _hf_dir(tmp_path / family, family, heads="Model")
    model = clozelab.load(tmp_path / family)
    assert model.family == family
    ids = _batch()[0]
    match = rf"no MLM head.*an HF {name}ForPreTraining / {name}ForMaskedLM directory"
    with pytest.raises(ClozelabError, match=match):
        model.mlm_logits(ids)
    with pytest.raises(ClozelabError, match=rf"no NSP head.*an HF {name}ForPreTraining directory"):
        model.nsp_logits(ids)


def test_an_incomplete_ernie_directory_is_said_to_miss_ernie_weights(tmp_path):
    """Before: 'missing BERT weights [...]. Fix: give a complete HF BERT checkpoint' (the
    encoder's family) for an ERNIE folder."""
    from clozelab.training.loading import load_backbone

    _hf_dir(tmp_path / "ernie", heads="ForMaskedLM")
    weights = tmp_path / "ernie" / "model.safetensors"
    state = load_file(weights)
    del state["ernie.encoder.layer.1.output.dense.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ClozelabError) as error:
        load_backbone(tmp_path / "ernie")
    text = str(error.value)
    assert "missing ERNIE weights ['ernie.encoder.layer.1.output.dense.weight']" in text
    assert "Fix: give a complete HF ERNIE checkpoint" in text and "BERT" not in text
