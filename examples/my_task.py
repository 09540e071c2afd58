"""A downstream task in the user's own module: SentLen, the sentence-length probing task of
Conneau et al. (2018): from a sentence's vector, which length bin does it fall in?

Fine-tune (or probe frozen features) from the command line, in the directory that holds this file
(its config is ``conf/task/sentlen.yaml``)::

    clozelab finetune hydra.searchpath=[file://conf] task=sentlen task.file=sentences.txt \\
        checkpoint=outputs/DATE/TIME mode=features

The task subclasses a built-in kind (``ClassificationTask``: its encoding, [CLS] head and
accuracy) and brings its own data: ``read`` labels every line of a plain text file with its length
bin. A task with a new head or metric overrides ``build_model`` / ``score`` of
``clozelab.tasks.base.Task``.
"""

from __future__ import annotations

import bisect
from pathlib import Path

from clozelab.core.errors import config_error
from clozelab.tasks.classification import ClassificationTask
from clozelab.tasks.examples import TextExample, holdout_split


class SentenceLength(ClassificationTask):
    """Sentences of ``task.file`` (one per line) labelled by their word count's bin
    (``task.bins``: the upper bounds of all bins but the last); ``task.holdout`` of them train."""

    def read(self, data_dir) -> dict[str, list]:
        path = Path(str(self.cfg.get("file") or "")).expanduser()
        if not path.is_file():
            raise config_error("task.file", str(path), "no such text file", "task.file=PATH")
        bins = [int(b) for b in self.cfg.get("bins", [5, 10, 20])]
        lines = [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]
        examples = [TextExample(line, None, str(bisect.bisect_left(bins, len(line.split()))))
                    for line in lines]  # fmt: skip
        train, validation = holdout_split(examples, float(self.cfg.get("holdout", 0.8)))
        return {"train": train, "validation": validation}
