"""MASS (SPECS §17), extraneous insertion (SPECS §16) and Restore (T5 Table 4 restore-the-input
variants): exact counts, specials and padding untouched, round trips."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from clozelab.corruption.compose import Compose
from clozelab.corruption.insert import Insertion
from clozelab.corruption.mass import MassMasking
from clozelab.corruption.restore import Restore

from .s2s_helpers import (
    CLS,
    MASK,
    PAD,
    SEP,
    SPECIALS,
    TOK,
    gen,
    originals,
    packed_batch,
    sources,
    targets,
)

ENCODER_TOK = {k: v for k, v in TOK.items() if k != "eos_token_id"}


def test_mass_fragment_length_contiguity_and_decoder_inputs():
    batch = packed_batch(b=256, t=64, seed=1)
    out = MassMasking(**TOK)(batch, gen(1))
    ops = Counter()
    for row, (s, t, o) in enumerate(zip(sources(out), targets(out), originals(batch))):
        m = len(o) - 2
        k = round(m * 0.5)
        assert len(t) == k and len(s) == len(o)
        positions = out["decoder_position_ids"][row][: len(t)].tolist()
        assert positions == list(range(positions[0], positions[0] + k))  # one contiguous fragment
        assert o[positions[0] : positions[0] + k] == t  # the decoder predicts exactly it
        rebuilt = s[: positions[0]] + t + s[positions[0] + k :]
        assert rebuilt == o  # source + target give back the original
        assert all(a == b for i, (a, b) in enumerate(zip(s, o)) if i not in positions)
        ops.update("mask" if s[i] == MASK else "keep" if s[i] == o[i] else "random"
                   for i in positions)  # fmt: skip
        dec = out["decoder_input_ids"][row][: len(t)].tolist()
        assert dec == [MASK, *t[:-1]]
    total = sum(ops.values())
    assert abs(ops["mask"] / total - 0.8) < 0.02 and abs(ops["random"] / total - 0.1) < 0.015


def test_mass_fragment_start_is_uniform():
    batch = packed_batch(b=4000, t=12, ragged=False, seed=2)  # m = 10, k = 5: starts 0..5
    out = MassMasking(**TOK)(batch, gen(2))
    starts = torch.bincount(out["decoder_position_ids"][:, 0] - 1, minlength=6).float()
    assert torch.allclose(starts / starts.sum(), torch.full((6,), 1 / 6), atol=0.02)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 1.0])
def test_insertion_count_exact_and_removal_gives_back_the_input(ratio):
    batch = packed_batch(b=64, t=50, seed=3, pair=True)
    c = Insertion(rate=0.15, random_ratio=ratio, **ENCODER_TOK)
    out = c(batch, gen(3))
    labels = out["insertion_labels"]
    for row in range(64):
        n = int(batch["attention_mask"][row].sum())
        real = out["attention_mask"][row].bool()
        num = math.ceil((n - 3) * 0.15)
        inserted = labels[row] == 1
        assert int(inserted.sum()) == num == int(out["inserted_count"][row])
        assert int(real.sum()) == n + num
        new = out["input_ids"][row][inserted]
        assert int((new != MASK).sum()) == math.ceil(num * ratio)
        assert not torch.isin(new[new != MASK], torch.tensor(SPECIALS)).any()
        assert not inserted[0] and not inserted[n + num - 1 :].any()  # inner positions only
        for key in ("input_ids", "token_type_ids", "special_tokens_mask", "word_ids"):
            assert torch.equal(out[key][row][real & ~inserted], batch[key][row][:n])  # round trip
        special = out["special_tokens_mask"][row].bool()
        assert (labels[row][special | ~real] == -100).all()
        assert (labels[row][real & ~special & ~inserted] == 0).all()
        assert (out["input_ids"][row][~real] == PAD).all()
    assert c.output_length(50, 3) == 50 + math.ceil(47 * 0.15)


def test_mask_and_insert_share_one_budget():
    batch = packed_batch(b=128, t=100, seed=4)
    steps = [{"_target_": "clozelab.corruption.masking.UnitMasking", "unit": "token", "rate": 0.12},
             {"_target_": "clozelab.corruption.insert.Insertion", "rate": 0.03}]  # fmt: skip
    c = Compose(steps, **ENCODER_TOK)
    out = c(batch, gen(4))
    inserted = out["insertion_labels"] == 1
    predicted = out["mlm_labels"] != -100
    assert not (inserted & predicted).any()  # never the same token twice
    n_cand = int((batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()).sum())
    n_row = (batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()).sum(-1)
    assert torch.equal(inserted.sum(-1), torch.ceil(n_row * 0.03).long())  # exact count
    assert abs(int(predicted.sum()) / n_cand - 0.12) < 0.01
    assert (out["mlm_labels"][out["attention_mask"] == 0] == -100).all()
    assert c.output_length(100, 2) == 100 + math.ceil(98 * 0.03)


def test_insertion_detection_objective_loss():
    from types import SimpleNamespace

    from clozelab.objectives.insertion import InsertionDetection

    batch = packed_batch(b=4, t=20)
    out = Insertion(rate=0.2, random_ratio=1.0, **ENCODER_TOK)(batch, gen(5))
    objective = InsertionDetection(hidden_size=8)
    hidden = torch.randn(*out["input_ids"].shape, 8, generator=gen(6))
    result = objective(SimpleNamespace(last_hidden_state=hidden), out)
    assert result.n_targets == int((out["insertion_labels"] != -100).sum())
    assert torch.isfinite(result.loss) and "insertion_acc" in result.logs


@pytest.mark.parametrize(
    ("step", "bos"),
    [
        ({"_target_": "clozelab.corruption.mask.TokenMasking", "rate": 0.15, "mask_prob": 0.9,
          "random_prob": 0.1, "keep_prob": 0.0}, False),
        ({"_target_": "clozelab.corruption.reorder.Reorder", "mode": "permute", "rate": 1}, False),
        ({"_target_": "clozelab.corruption.insert.Insertion", "rate": 0.15}, True),
        ({"_target_": "clozelab.corruption.delete.Deletion", "rate": 0.15}, True),
    ],
)  # fmt: skip
def test_restore_targets_the_original_row(step, bos):
    batch = packed_batch(b=64, t=80, seed=7)
    c = Restore([step], decoder_start="pad" if not bos else "eos", bos=bos, **TOK)
    out = c(batch, gen(7))
    assert targets(out) == originals(batch, bos)
    kind = step["_target_"].rsplit(".", 1)[1]
    changed = 0
    for s, o in zip(sources(out), originals(batch, bos)):
        assert s[-1] == SEP and (s[0] == CLS) == bos
        if kind == "TokenMasking":
            assert len(s) == len(o)
            changed += sum(a != b for a, b in zip(s, o))
        elif kind == "Reorder":
            assert Counter(s) == Counter(o)
            changed += s != o
        elif kind == "Insertion":
            assert len(s) - len(o) == math.ceil((len(o) - 2) * 0.15)
        else:
            assert len(s) <= len(o)
    if kind == "TokenMasking":
        n = sum(len(o) - 1 for o in originals(batch, bos))
        assert abs(changed / n - 0.15) < 0.015
    if kind == "Reorder":
        assert changed == 64
    assert c.output_length(80, 2) == (80 if kind != "Insertion" else 80 + 12) - (not bos)


def test_insertion_objective_is_refused_without_insertion_labels(compose_pretrain):
    from clozelab.core.errors import ClozelabError
    from clozelab.training.validate import validate_objectives

    with pytest.raises(ClozelabError, match="insertion_labels.*corruption=insert"):
        validate_objectives(compose_pretrain("objective=[mlm,insertion]", "corruption=mask"))
    for corruption in ("insert", "mask_insert"):  # composed or alone: accepted
        cfg = compose_pretrain("objective=[insertion]", f"corruption={corruption}")
        assert validate_objectives(cfg) == ["insertion"]


# one preset per class (test_config composes and builds every preset, test_preview runs each)
SEQ2SEQ_PRESETS = ["t5_span", "t5_bert", "bart", "mass", "insert_restore"]  # fmt: skip


@pytest.mark.parametrize("name", SEQ2SEQ_PRESETS)
def test_seq2seq_presets_compose_with_a_decoder_and_are_refused_without(compose_pretrain, name):
    from clozelab.core.errors import ClozelabError
    from clozelab.training.validate import validate_pretrain

    layout = ("embedding=t5", "encoder=t5", "decoder=t5", "objective=[seq2seq]")
    validate_pretrain(
        compose_pretrain(*layout, f"corruption={name}", "data.instances=doc_sentences")
    )
    with pytest.raises(ClozelabError, match="encoder-only"):
        validate_pretrain(compose_pretrain("objective=[mlm]", f"corruption={name}"))
