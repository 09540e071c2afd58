"""Task readers on random bytes and truncated files: examples or a ClozelabError, nothing else."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clozelab.core.errors import ClozelabError
from clozelab.tasks.readers import read_conll, read_delimited, read_jsonl, read_squad

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip

QUESTION = {"id": "1", "question": "What?", "answers": [{"text": "Paris", "answer_start": 0}]}
GOOD = {
    "tsv": b"sentence\tlabel\na fine film .\t1\na dull one .\t0\n",
    "jsonl": b'{"premise": "A man eats.", "hypothesis": "Someone eats.", "label": "entailment"}\n',
    "conll": b"-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n",
    "squad": json.dumps(
        {
            "data": [
                {
                    "title": "t",
                    "paragraphs": [
                        {
                            "context": "Paris is big.",
                            "qas": [
                                {
                                    "id": "1",
                                    "question": "What?",
                                    "answers": [{"text": "Paris", "answer_start": 0}],
                                }
                            ],
                        }
                    ],
                }
            ]
        }
    ).encode(),
}
READERS = {
    "tsv": lambda p: read_delimited(p, "\t", "sentence", label="label"),
    "jsonl": lambda p: read_jsonl(p, "premise", "hypothesis", "label"),
    "conll": lambda p: read_conll(p),
    "squad": lambda p: read_squad(p),
}


def _check(reader, path):
    try:
        examples = reader(path)
    except ClozelabError as exc:
        assert str(path) in str(exc) or "task" in str(exc)
        return
    assert isinstance(examples, list)


@pytest.mark.parametrize("kind", sorted(READERS))
@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(tmp_path, kind, data):
    path = tmp_path / f"fuzz.{kind}"
    path.write_bytes(data)
    _check(READERS[kind], path)


@pytest.mark.parametrize("kind", sorted(READERS))
@FUZZ
@given(cut=st.integers(min_value=0, max_value=400), noise=st.binary(max_size=8))
def test_truncated_and_damaged_files(tmp_path, kind, cut, noise):
    good = GOOD[kind]
    path = tmp_path / f"cut.{kind}"
    path.write_bytes(good[: cut % (len(good) + 1)] + noise)
    _check(READERS[kind], path)


@pytest.mark.parametrize("kind", sorted(READERS))
def test_the_intact_files_read(tmp_path, kind):
    path = tmp_path / f"good.{kind}"
    path.write_bytes(GOOD[kind])
    assert len(READERS[kind](path)) >= 1
