"""Write the pre-training corpus of this study as BERT-format text (one sentence per line, a
blank line between documents) into OUT_DIR:

- ``wikipedia_sample.txt``: gensim's bundled Wikipedia sample (the default corpus), sentence-split;
- ``wikitext2.txt``: WikiText-2 validation + test from ``../shared/data`` (articles split at the
  top-level ``= Title =`` headings, ``@-@`` joins undone, ``<unk>`` written as ``unk``, a
  final ``.`` added to lines that lack one);
- ``sst2_train_text.txt``: the *sentences* of the SST-2 train split (never its labels), 16 to a
  document; SST-2 dev, which the fine-tuned models are scored on, is not used.

usage: python build_corpus.py OUT_DIR [SHARED_DATA_DIR]
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from clozelab.data.corpus import iter_documents
from clozelab.data.sentences import split_sentences

HEADING = re.compile(r"= [^=].* =")
SENTENCE_END = re.compile(r"(?<=[.!?]) (?=[A-Z])")


def write_documents(path: Path, documents: Iterable[list[str]]) -> None:
    lines = 0
    with path.open("w", encoding="utf-8") as f:
        for sentences in documents:
            sentences = [s.strip() for s in sentences if s.strip()]
            if sentences:
                f.write("\n".join(sentences) + "\n\n")
                lines += len(sentences)
    print(f"{path}: {lines} sentences")


def wikipedia_sample() -> Iterator[list[str]]:
    for doc in iter_documents("bundled:wikipedia"):
        yield [text for text, _ in split_sentences(doc)]


def wikitext2(folder: Path) -> Iterator[list[str]]:
    for name in ("valid.txt", "test.txt"):
        doc: list[str] = []
        for raw in (folder / name).open(encoding="utf-8"):
            line = raw.strip()
            if HEADING.fullmatch(line):
                if doc:
                    yield doc
                doc = []
                continue
            if not line or line.startswith("="):
                continue
            line = line.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
            line = line.replace("<unk>", "unk")
            for sentence in SENTENCE_END.split(line):
                sentence = sentence.strip()
                doc.append(sentence if sentence.endswith((".", "!", "?")) else sentence + ".")
        if doc:
            yield doc


def sst2_sentences(path: Path, per_document: int = 16) -> Iterator[list[str]]:
    with path.open(encoding="utf-8") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        sentences = [row["sentence"] for row in rows]
    for i in range(0, len(sentences), per_document):
        yield sentences[i : i + per_document]


def main() -> None:
    out = Path(sys.argv[1])
    shared = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("../shared/data")
    out.mkdir(parents=True, exist_ok=True)
    write_documents(out / "sst2_train_text.txt", sst2_sentences(shared / "sst2" / "train.tsv"))
    write_documents(out / "wikitext2.txt", wikitext2(shared / "wikitext2"))
    write_documents(out / "wikipedia_sample.txt", wikipedia_sample())


if __name__ == "__main__":
    main()
