"""Dialogue data for ERNIE's DLM: readers, triples, real/fake tables, instances, mixed stream."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.corruption.ernie import ErnieMasking
from clozelab.corruption.mask import TokenMasking
from clozelab.corruption.masking import UnitMasking
from clozelab.data.collate import Collator
from clozelab.data.dialogue import Q, R, read_chatterbot, read_dialogue_jsonl, read_dialogues
from clozelab.data.dialogue_instances import (
    FAKE,
    LABEL,
    PATTERNS,
    REAL,
    REPLACED,
    DialogueCorpus,
    DialogueDataset,
    enumerate_triples,
    fake_table,
    split_dialogues,
    truncated_lengths,
)
from clozelab.data.dialogue_stream import (
    MixedCollator,
    MixedDataLoader,
    MixedDataset,
    StreamBatches,
)
from clozelab.data.tokenizer import train_wordpiece

WORDS = ["how", "are", "you", "fine", "thanks", "what", "is", "your", "name", "my", "bot", "do",
         "like", "music", "yes", "no"]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 8)) for _ in range(200)]
    return train_wordpiece(texts, vocab_size=200, min_frequency=1)


def _dialogues(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return [
        [(" ".join(rng.choice(WORDS, rng.integers(2, 9))), Q if i % 2 == 0 else R)
         for i in range(int(rng.integers(2, 6)))]
        for _ in range(n)
    ]  # fmt: skip


THREADS = [
    [("how are you", Q), ("fine thanks", R)],
    [("how are you", Q), ("yes", R)],  # a second response to one query: QRR
    [("what is your name", Q), ("fine thanks", R)],  # a second query of one response: QQR
]


@pytest.fixture(scope="module")
def corpus(tokenizer):
    return DialogueCorpus.build(_dialogues() + THREADS, tokenizer)


def _dataset(corpus, tokenizer, max_seq_length=64, fake_rate=0.5, seed=3, epoch=0, shuffle=True):
    return DialogueDataset(corpus, tokenizer.cls_id, tokenizer.sep_id, max_seq_length, fake_rate,
                           seed, split=0, shuffle=shuffle, epoch=epoch)  # fmt: skip


# ---------------------------------------------------------------------------------- readers
def test_jsonl_reader_plain_turns_alternate_and_role_objects_are_kept(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [
        {"turns": ["Hi", "Hello there", "How are you?"], "id": 7},
        {},  # replaced by a blank line below
        {"turns": [{"role": "q", "text": " Why? "}, {"role": "Q", "text": "Tell me"},
                   {"role": "R", "text": "Because"}]},
    ]  # fmt: skip
    text = "\n".join("" if not line else json.dumps(line) for line in lines)
    path.write_text(text + "\n\n", "utf-8")
    assert read_dialogue_jsonl(path) == [
        [("Hi", Q), ("Hello there", R), ("How are you?", Q)],
        [("Why?", Q), ("Tell me", Q), ("Because", R)],
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"turns": ["a", "b"]', r"line 2: not JSON"),
        ('["a", "b"]', r"line 2: no non-empty 'turns' list"),
        ('{"turns": []}', r"line 2: no non-empty 'turns' list"),
        ('{"dialogue": ["a"]}', r"line 2: no non-empty 'turns' list"),
        ('{"turns": ["a", 3]}', r"line 2: turn 1 is int"),
        ('{"turns": ["a", "  "]}', r"line 2: turn 1 is empty"),
        ('{"turns": [{"role": "X", "text": "a"}]}', r"line 2: turn 0 has role 'X'"),
        ('{"turns": [{"role": "Q"}]}', r"line 2: turn 0 has no 'text'"),
        ('{"turns": ["a", {"role": "R", "text": "b"}]}', r"line 2: mixes"),
    ],
)  # fmt: skip
def test_jsonl_reader_names_the_path_the_line_and_the_fix(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"turns": ["fine", "ok"]}\n' + line + "\n", "utf-8")
    with pytest.raises(ClozelabError, match=message) as info:
        read_dialogue_jsonl(path)
    assert str(path) in str(info.value) and "Fix: one dialogue per line" in str(info.value)


def test_missing_and_empty_dialogue_files_are_clear_errors(tmp_path):
    with pytest.raises(ClozelabError, match=r"data.dialogue.corpus=.*nope.jsonl.*no such file"):
        read_dialogues(str(tmp_path / "nope.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", "utf-8")
    with pytest.raises(ClozelabError, match=r"holds no dialogue.*Fix"):
        read_dialogues(str(empty))
    with pytest.raises(ClozelabError, match=r"no such file or directory"):
        read_dialogues(str(tmp_path / "missing_dir"))
    with pytest.raises(ClozelabError, match=r"unknown bundled dialogue corpus"):
        read_dialogues("bundled:tieba")
    (tmp_path / "d.txt").write_text("hi\n", "utf-8")
    with pytest.raises(ClozelabError, match=r"unknown dialogue format '.txt'"):
        read_dialogues(str(tmp_path / "d.txt"))
    with pytest.raises(ClozelabError, match=r"no \*.yml conversation file"):
        read_dialogues(str(tmp_path))


def test_chatterbot_format_directory_and_malformed_yaml(tmp_path):
    (tmp_path / "a.yml").write_text(
        "categories: [x]\nconversations:\n- - Hello\n  - Hi\n  - How are you?\n- - ''\n", "utf-8"
    )
    assert read_dialogues(str(tmp_path)) == [[("Hello", Q), ("Hi", R), ("How are you?", Q)]]
    (tmp_path / "b.yml").write_text("conversations:\n- - a\n  - [b\n", "utf-8")
    with pytest.raises(ClozelabError, match=r"b.yml is not valid YAML at line \d+"):
        read_chatterbot(tmp_path)
    (tmp_path / "b.yml").write_text("categories: [x]\n", "utf-8")
    with pytest.raises(ClozelabError, match=r"b.yml has no 'conversations:' list"):
        read_chatterbot(tmp_path)


def test_bundled_chatterbot_conversations():
    dialogues = read_dialogues("bundled:chatterbot")
    assert len(dialogues) > 1000
    assert all(len(d) >= 1 and [r for _, r in d] == [i % 2 for i in range(len(d))]
               for d in dialogues)  # fmt: skip


# ---------------------------------------------------------------------------------- triples
def test_windows_and_threads_give_the_three_patterns():
    dialogues = [
        [(0, Q), (1, R), (2, Q), (3, R)],  # windows QRQ (0,1,2); RQR skipped
        [(0, Q), (4, R)],  # query 0 answered again: QRR (0, 1, 4)
        [(5, Q), (4, R)],  # response 4 to another query: QQR (0, 5, 4)
        [(6, Q), (7, R), (8, R)],  # explicit roles: a QRR window
        [(9, Q), (9, R)],  # an utterance answering itself is no pair
    ]
    triples, patterns = enumerate_triples(dialogues)
    got = [(tuple(t), PATTERNS[p]) for t, p in zip(triples.tolist(), patterns)]
    assert got == [((0, 1, 2), "QRQ"), ((6, 7, 8), "QRR"), ((0, 1, 4), "QRR"), ((0, 5, 4), "QQR")]
    only, kinds = enumerate_triples(dialogues, patterns=["QQR"])
    assert only.tolist() == [[0, 5, 4]] and set(kinds.tolist()) == {2}
    windows, _ = enumerate_triples(dialogues, threads=False)
    assert windows.tolist() == [[0, 1, 2], [6, 7, 8]]


def test_utterances_are_deduplicated_by_tokens(tokenizer):
    corpus = DialogueCorpus.build(
        [[("How are you", Q), ("fine", R), ("HOW ARE YOU", Q)]], tokenizer
    )
    assert len(corpus.pool) == 2  # lowercasing: one utterance
    assert len(corpus) == 0  # the window (u0, u1, u0) repeats an utterance: no triple


def test_split_holds_out_every_kth_dialogue():
    train, validation = split_dialogues(list(range(40)), 0.1)
    assert validation == list(range(9, 40, 10)) and len(train) == 36
    assert split_dialogues([1, 2], 0.0) == ([1, 2], [])


# ---------------------------------------------------------------------------------- real/fake
def test_fake_rate_within_binomial_bounds_and_uniform_position():
    n, rate = 20_000, 0.5
    triples = np.stack([np.arange(n) % 50, np.arange(n) % 50 + 50, np.arange(n) % 50 + 100], 1)
    table = fake_table(triples, 150, rate, np.random.default_rng(123))
    fakes = int((table[:, LABEL] == FAKE).sum())
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(fakes - n * rate) < 4 * sigma
    positions = table[table[:, LABEL] == FAKE, REPLACED]
    for k in range(3):  # the replaced utterance is uniform over the three
        assert abs((positions == k).sum() - fakes / 3) < 4 * math.sqrt(fakes * 2 / 9)
    assert set(np.unique(table[:, LABEL]).tolist()) == {REAL, FAKE} == {1, 0}


def test_fakes_differ_from_the_original_in_exactly_one_utterance(corpus, tokenizer):
    table = fake_table(corpus.triples, len(corpus.pool), 0.5, np.random.default_rng(5))
    differs = table[:, :3] != corpus.triples
    real = table[:, LABEL] == REAL
    assert (differs.sum(1) == np.where(real, 0, 1)).all()
    assert (table[real, REPLACED] == -1).all()
    fake = ~real
    assert (differs[fake].argmax(1) == table[fake, REPLACED]).all()
    for row, triple in zip(table[fake][:50], corpus.triples[fake][:50]):
        k = int(row[REPLACED])  # the replacement's tokens differ from the original's
        a, b = corpus.pool.utterance(int(row[k]))[0], corpus.pool.utterance(int(triple[k]))[0]
        assert not np.array_equal(a, b)
    assert table[:, :3].max() < len(corpus.pool)
    with pytest.raises(ClozelabError, match="at least two distinct utterances"):
        fake_table(np.zeros((2, 3), np.int64), 1, 0.5, np.random.default_rng(0))


def test_fake_rate_zero_and_one():
    triples = np.arange(30).reshape(10, 3)
    assert (fake_table(triples, 30, 0.0, np.random.default_rng(0))[:, LABEL] == REAL).all()
    assert (fake_table(triples, 30, 1.0, np.random.default_rng(0))[:, LABEL] == FAKE).all()


# ---------------------------------------------------------------------------------- instances
def _brute_force_truncation(lengths, budget):
    lengths = list(lengths)
    while sum(lengths) > budget:
        longest = max(lengths)
        last = max(i for i, n in enumerate(lengths) if n == longest)
        lengths[last] -= 1
    return lengths


def test_truncation_matches_removing_from_the_longest_one_token_at_a_time():
    rng = np.random.default_rng(0)
    for _ in range(300):
        lengths = rng.integers(1, 40, 3)
        budget = int(rng.integers(3, 90))
        assert truncated_lengths(lengths, budget).tolist() == _brute_force_truncation(
            lengths, budget
        )


def test_instances_have_the_layout_roles_and_annotations(corpus, tokenizer):
    data = _dataset(corpus, tokenizer, max_seq_length=16)
    seen = set()
    for q in range(len(data)):
        item = data[q]
        row, triple = data.row(q)
        ids, special = item["input_ids"], item["special_tokens_mask"].astype(bool)
        assert len(ids) <= 16 and item["dialogue_label"] == row[LABEL]
        seps = np.nonzero(ids == tokenizer.sep_id)[0]
        assert ids[0] == tokenizer.cls_id and len(seps) == 3 and seps[-1] == len(ids) - 1
        assert np.array_equal(np.nonzero(special)[0], np.concatenate([[0], seps]))
        pattern = PATTERNS[int(corpus.patterns[triple])]
        seen.add(pattern)
        roles = [Q if c == "Q" else R for c in pattern]
        starts = np.concatenate([[1], seps[:-1] + 1])
        assert item["role_ids"][0] == Q
        for k in range(3):
            span = slice(starts[k], seps[k] + 1)  # the utterance and its [SEP]
            assert seps[k] > starts[k]  # every utterance keeps a token
            assert (item["role_ids"][span] == roles[k]).all()
            assert (item["sentence_ids"][starts[k] : seps[k]] == k).all()
            utterance = corpus.pool.utterance(int(row[k]))[0]
            assert np.array_equal(ids[starts[k] : seps[k]], utterance[: seps[k] - starts[k]])
        assert (item["word_ids"][special] == -1).all() and (item["word_ids"][~special] >= 0).all()
        assert (item["sentence_ids"][special] == -1).all()
        assert (item["entity_ids"] == -1).all() and (item["token_type_ids"] == 0).all()
    assert seen == set(PATTERNS)


def test_instances_are_deterministic_per_seed_epoch_and_position(corpus, tokenizer):
    a, b = _dataset(corpus, tokenizer), _dataset(corpus, tokenizer)
    positions = [0, 5, len(corpus) + 3, 3 * len(corpus) - 1]  # across passes
    for q in positions:
        assert all(np.array_equal(a[q][k], b[q][k]) for k in a[q])
    passes = [a.draws(0, c)[0] for c in range(2)]
    assert not np.array_equal(*passes)  # each pass has its own order
    other = _dataset(corpus, tokenizer, epoch=1)
    assert not np.array_equal(a.draws(0, 0)[1], other.draws(1, 0)[1])  # and its own fakes
    assert sorted(passes[0].tolist()) == list(range(len(corpus)))
    fixed = _dataset(corpus, tokenizer, shuffle=False)
    assert fixed.draws(0, 0)[0].tolist() == list(range(len(corpus)))


def test_an_empty_split_is_a_clear_error(tokenizer):
    empty = DialogueCorpus.build([[("hi", Q), ("fine", R)]], tokenizer, threads=False)
    with pytest.raises(ClozelabError, match=r"no dialogue triple.*Fix"):
        _dataset(empty, tokenizer)


@pytest.mark.parametrize("scheme", ["token", "whole_word", "ernie"])
def test_no_special_token_is_masked_and_mlm_covers_all_turns(corpus, tokenizer, scheme):
    runtime = {"vocab_size": tokenizer.vocab_size, "mask_token_id": tokenizer.mask_id,
               "special_token_ids": tokenizer.special_ids}  # fmt: skip
    levels = {"basic": 0.5, "entity": 0.5}
    corruption = {
        "token": lambda: TokenMasking(rate=0.5, **runtime),
        "whole_word": lambda: UnitMasking(unit="whole_word", rate=0.5, **runtime),
        "ernie": lambda: ErnieMasking(rate=0.5, level_probs=levels, **runtime),
    }[scheme]()
    data = _dataset(corpus, tokenizer)
    items = [data[q] for q in range(64)]
    batch = Collator(tokenizer.pad_id, corruption, seed=1)(items)
    special = batch["special_tokens_mask"].bool()
    original = Collator(tokenizer.pad_id)(items)["input_ids"]
    assert (batch["mlm_labels"][special] == -100).all()
    assert torch.equal(batch["input_ids"][special], original[special])
    assert batch["role_ids"].shape == batch["input_ids"].shape
    predicted = batch["mlm_labels"] != -100
    turn = batch["sentence_ids"][predicted]
    assert set(turn.tolist()) == {0, 1, 2}  # predictions in every turn
    assert torch.equal(batch["mlm_labels"][predicted], original[predicted])
    assert batch["dialogue_label"].tolist() == [int(i["dialogue_label"]) for i in items]


# ---------------------------------------------------------------------------------- the stream
def test_alternate_schedule_every_kth_step_is_dialogue():
    steps = StreamBatches(np.arange(20), 4, 3, "alternate", every=3)
    kinds = "".join(s[0][0][0].upper() for s in steps)
    assert kinds == "TTDTTDT" and len(steps) == 7  # 5 text batches, 2 dialogue
    text = [k for s in steps for stream, k in s if stream == "text"]
    assert text == list(range(20))
    dialogue = [k for s in steps for stream, k in s if stream == "dialogue"]
    assert dialogue == list(range(6))  # consecutive stream positions
    every2 = StreamBatches(np.arange(12), 4, 2, "alternate", every=2)
    assert "".join(s[0][0][0] for s in every2) == "tdtdtd"


def test_joint_schedule_has_both_batches_every_step_and_ranks_split_the_stream():
    steps = StreamBatches(np.arange(10), 4, 2, "joint", every=2)
    assert len(steps) == 2
    assert steps.step(1) == [("text", 4), ("text", 5), ("text", 6), ("text", 7),
                             ("dialogue", 2), ("dialogue", 3)]  # fmt: skip
    ranks = [StreamBatches(np.arange(10), 4, 2, "joint", 2, rank=r, world_size=2) for r in (0, 1)]
    one = StreamBatches(np.arange(10), 4, 4, "joint", 2)
    for s in range(2):  # the ranks' step-s dialogue keys together: one process's, batch 2x
        keys = sorted(k for r in ranks for stream, k in r.step(s) if stream == "dialogue")
        assert keys == [k for stream, k in one.step(s) if stream == "dialogue"]
    resumed = StreamBatches(np.arange(10), 4, 2, "joint", 2, start=1)
    assert list(resumed) == [steps.step(1)] and len(resumed) == 2


def _mixed_loader(corpus, tokenizer, schedule, done):
    text = [{"index": np.int64(i), "input_ids": np.array([2, 10 + i % 7, 11, 3]),
             "token_type_ids": np.zeros(4, np.int64), "special_tokens_mask": np.array([1, 0, 0, 1]),
             "word_ids": np.array([-1, 0, 1, -1])} for i in range(40)]  # fmt: skip
    masking = TokenMasking(rate=0.3, vocab_size=tokenizer.vocab_size,
                           mask_token_id=tokenizer.mask_id,
                           special_token_ids=tokenizer.special_ids)  # fmt: skip
    order = np.random.default_rng(0).permutation(40)
    steps = StreamBatches(order, 4, 3, schedule, every=2)
    loader = MixedDataLoader(
        MixedDataset(text, _dataset(corpus, tokenizer)),
        batch_sampler=steps,
        collate_fn=MixedCollator(Collator(0, masking, 1), Collator(0, masking, 2)),
    )
    loader.epoch, loader.position = 0, lambda: done
    return loader


def _flat(batch):
    parts = batch.items() if "input_ids" not in batch else [("", batch)]
    return {f"{p}/{k}": v for p, b in parts for k, v in b.items()}


@pytest.mark.parametrize("schedule", ["alternate", "joint"])
def test_mixed_loader_resumes_at_the_same_batches(corpus, tokenizer, schedule):
    first = _mixed_loader(corpus, tokenizer, schedule, done=3)
    expected = [_flat(b) for b in first][3:]
    state = first.state_dict()
    assert state["batches"] == 3 and state["dialogue"]["schedule"] == schedule
    resumed = _mixed_loader(corpus, tokenizer, schedule, done=0)
    resumed.load_state_dict(state)
    got = [_flat(b) for b in resumed]
    assert len(got) == len(expected) and len(resumed) == len(first)
    for a, b in zip(got, expected):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if schedule == "joint":
        assert {k.split("/")[0] for k in got[0]} == {"text", "dialogue"}
    changed = dict(state, dialogue=dict(state["dialogue"], every=3))
    with pytest.raises(ClozelabError, match=r"data.dialogue: the checkpoint being resumed"):
        _mixed_loader(corpus, tokenizer, schedule, done=0).load_state_dict(changed)
