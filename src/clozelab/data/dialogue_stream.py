"""Text and dialogue batches in one resumable train loader (ERNIE DLM, SPECS.md §11).

``data.dialogue.schedule`` says how dialogue batches join the text batches of an epoch:

- ``alternate`` (ERNIE: "trained alternately"): every ``every``-th step is a dialogue batch, the
  others are text batches (``every=2``: text, dialogue, text, dialogue, ...);
- ``joint``: every step has one text batch and one dialogue batch (``{"text": ..., "dialogue":
  ...}``); their losses are summed.

The text batches define the epoch (all of them, in the EpochSampler's order); the dialogue batches
run through the triples in as many passes as the epoch needs, each pass in its own order. Step
``s`` of an epoch is a pure function of (seed, epoch, s), so the checkpointed step position (the
same one plain text loaders store) restores a resumed run's batches exactly; with w ranks the
ranks' step-s dialogue batches together are stream positions [s*B*w, (s+1)*B*w), as for text.
"""

from __future__ import annotations

import logging

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from clozelab.core.batch import DialogueBatch, JointBatch
from clozelab.core.errors import ClozelabError
from clozelab.core.signals import ignore_stop_signals
from clozelab.data.collate import Collator
from clozelab.data.datamodule import VALIDATION_EPOCH, ResumableDataLoader, worker_context
from clozelab.data.dialogue import read_dialogues
from clozelab.data.dialogue_instances import DialogueCorpus, DialogueDataset, split_dialogues
from clozelab.data.sampler import EpochSampler

log = logging.getLogger(__name__)

SCHEDULES = ("alternate", "joint")
TEXT, DIALOGUE = "text", "dialogue"


class StreamBatches(Sampler[list]):
    """One epoch's steps as lists of ``(stream, key)``: text keys are instance indices (this rank's
    ``text_order``), dialogue keys are positions in the epoch's dialogue stream.

    ``start`` skips the first ``start`` steps (resume); ``len()`` stays the whole epoch.
    """

    def __init__(
        self,
        text_order,
        text_batch: int,
        dialogue_batch: int,
        schedule: str,
        every: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ):
        self.text_order = np.asarray(text_order, dtype=np.int64)
        self.text_batch, self.dialogue_batch = text_batch, dialogue_batch
        self.schedule, self.every = schedule, every
        self.rank, self.world_size = rank, world_size
        self.text_batches = len(self.text_order) // text_batch  # drop_last, as text training
        self.start = start  # steps already trained on (set on resume, clamped to len())

    def __len__(self) -> int:
        if self.schedule == "joint":
            return self.text_batches
        return self.text_batches + self.text_batches // (self.every - 1)

    def _text(self, b: int) -> list:
        rows = self.text_order[b * self.text_batch : (b + 1) * self.text_batch]
        return [(TEXT, int(i)) for i in rows]

    def _dialogue(self, j: int) -> list:
        rows = (np.arange(self.dialogue_batch) + j * self.dialogue_batch) * self.world_size
        return [(DIALOGUE, int(q)) for q in rows + self.rank]

    def step(self, s: int) -> list:
        """The keys of step ``s``."""
        if self.schedule == "joint":
            return self._text(s) + self._dialogue(s)
        group, slot = divmod(s, self.every)
        if slot == self.every - 1:
            return self._dialogue(group)
        return self._text(group * (self.every - 1) + slot)

    def __iter__(self):
        return (self.step(s) for s in range(self.start, len(self)))


class MixedDataset(Dataset):
    """``dataset[(stream, key)]``: ``(stream, item)``, a text instance or a dialogue stream
    item."""

    def __init__(self, text: Dataset, dialogue: DialogueDataset):
        self.text, self.dialogue = text, dialogue

    def __len__(self) -> int:
        return len(self.text)

    def __getitem__(self, key):
        stream, i = key
        return stream, self.dialogue[i] if stream == DIALOGUE else self.text[i]


class MixedCollator:
    """Collates a step's ``(stream, item)`` pairs per stream: one batch, or a ``JointBatch``
    ``{"text": ..., "dialogue": ...}``."""

    def __init__(self, text: Collator, dialogue: Collator):
        self.text, self.dialogue = text, dialogue

    def __call__(self, items):
        dialogue = [item for stream, item in items if stream == DIALOGUE]
        text = [item for stream, item in items if stream != DIALOGUE]
        if text and dialogue:
            return JointBatch({TEXT: self.text(text), DIALOGUE: self.dialogue(dialogue)})
        return self.dialogue(dialogue) if dialogue else self.text(text)


class MixedDataLoader(ResumableDataLoader):
    """The train loader of a run with dialogue batches; its checkpointed position is in steps."""

    def state_dict(self) -> dict:
        steps = self.batch_sampler
        return {
            "epoch": self.epoch,
            "batches": int(self.position()) if self.position is not None else 0,
            "batch_size": steps.text_batch,
            "world_size": steps.world_size,
            "dialogue": {
                "schedule": steps.schedule,
                "every": steps.every,
                "batch_size": steps.dialogue_batch,
            },
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("epoch", -1)) != self.epoch:
            return  # saved in another epoch: this epoch starts afresh
        steps = self.batch_sampler
        world = int(state.get("world_size", 1))
        saved = state.get("dialogue") or {}
        now = {"schedule": steps.schedule, "every": steps.every}
        same = (
            int(state.get("batch_size") or 0) * world == steps.text_batch * steps.world_size
            and int(saved.get("batch_size") or 0) * world == steps.dialogue_batch * steps.world_size
            and all(saved.get(k) == v for k, v in now.items())
        )
        if not same:
            raise ClozelabError(
                f"data.dialogue: the checkpoint being resumed was trained with text batch "
                f"{state.get('batch_size')} x {world} ranks and dialogue settings {saved or None}; "
                f"this run has text batch {steps.text_batch} x {steps.world_size} ranks and "
                f"{dict(now, batch_size=steps.dialogue_batch)}, so its position in the epoch "
                "cannot be restored. Fix: re-launch with the settings in config.yaml beside it, "
                "or use a new hydra.run.dir."
            )
        steps.start = min(int(state["batches"]), len(steps))


class DialogueStream:
    """The dialogue data of a run and how its batches join the text batches.

    Args:
        train, validation: the two splits (validation may be empty: no dialogue validation).
        schedule: ``alternate`` or ``joint``; every: the period of dialogue steps (alternate).
        batch_size: dialogue sequences per batch (per rank).
        fake_rate: probability that an instance is fake (0.5, our assumption).
        max_seq_length: longest dialogue instance; seed: the run's seed.
        cls_id, sep_id: the tokenizer's [CLS]/[SEP] ids.
    """

    def __init__(
        self,
        train: DialogueCorpus,
        validation: DialogueCorpus,
        *,
        schedule: str,
        every: int,
        batch_size: int,
        fake_rate: float,
        max_seq_length: int,
        seed: int,
        cls_id: int,
        sep_id: int,
    ):
        self.train, self.validation = train, validation
        self.schedule, self.every, self.batch_size = schedule, every, batch_size
        self.fake_rate, self.max_seq_length, self.seed = fake_rate, max_seq_length, seed
        self.cls_id, self.sep_id = cls_id, sep_id

    @classmethod
    def from_config(cls, data_cfg, tokenizer, seed: int) -> DialogueStream | None:
        """None when ``data.dialogue.corpus`` is unset; otherwise read, split and tokenise."""
        cfg = data_cfg.get("dialogue")
        if cfg is None or not cfg.get("corpus"):
            return None
        dialogues = read_dialogues(cfg.corpus)
        fraction = cfg.get("validation_fraction", data_cfg.get("validation_fraction", 0.05))
        train, validation = split_dialogues(dialogues, float(fraction))
        patterns, threads = list(cfg.get("patterns")), bool(cfg.get("threads"))
        splits = [
            DialogueCorpus.build(part, tokenizer, patterns, threads) for part in (train, validation)
        ]
        log.info(
            "Dialogue corpus %s: %d dialogues, %d train triples %s, %d validation triples",
            cfg.corpus,
            len(dialogues),
            len(splits[0]),
            splits[0].pattern_counts(),
            len(splits[1]),
        )
        return cls(
            *splits,
            schedule=str(cfg.schedule),
            every=int(cfg.every),
            batch_size=int(cfg.batch_size),
            fake_rate=float(cfg.fake_rate),
            max_seq_length=int(data_cfg.max_seq_length),
            seed=int(seed),
            cls_id=tokenizer.cls_id,
            sep_id=tokenizer.sep_id,
        )

    def dataset(self, split: str, epoch: int) -> DialogueDataset:
        corpus = self.train if split == "train" else self.validation
        return DialogueDataset(
            corpus,
            self.cls_id,
            self.sep_id,
            self.max_seq_length,
            self.fake_rate,
            self.seed,
            split=0 if split == "train" else 1,
            shuffle=split == "train",
            epoch=epoch,
        )

    def collator(self, text: Collator, epoch: int) -> Collator:
        """A dialogue collator beside the text one: same corruption, its own seed stream."""
        salted = int(np.random.SeedSequence([self.seed, 0xD1A]).generate_state(1)[0])
        collator = Collator(
            text.pad_id, text.corruption, salted, text.pad_to_multiple_of, DialogueBatch
        )
        collator.epoch = epoch
        return collator

    def train_loader(self, text: ResumableDataLoader) -> MixedDataLoader:
        """The mixed train loader of the epoch ``text`` (the plain text train loader) is for."""
        sampler = text.sampler
        steps = StreamBatches(
            list(sampler),
            text.batch_size,
            self.batch_size,
            self.schedule,
            self.every,
            sampler.rank,
            sampler.world_size,
        )
        loader = MixedDataLoader(
            MixedDataset(text.dataset, self.dataset("train", text.epoch)),
            batch_sampler=steps,
            collate_fn=MixedCollator(text.collate_fn, self.collator(text.collate_fn, text.epoch)),
            num_workers=text.num_workers,
            multiprocessing_context=worker_context(text.num_workers),
            worker_init_fn=ignore_stop_signals,
            persistent_workers=False,
            generator=text.generator,
        )
        loader.epoch = text.epoch
        return loader

    def val_loader(self, text: DataLoader) -> DataLoader | None:
        """The dialogue validation loader (None when the validation split has no triple)."""
        if len(self.validation) == 0:
            log.warning("No dialogue triple in the validation split: no val/dlm_* metrics")
            return None
        dataset = self.dataset("validation", VALIDATION_EPOCH)
        sampler = EpochSampler(
            len(dataset),
            self.seed,
            VALIDATION_EPOCH,
            False,
            text.sampler.rank,
            text.sampler.world_size,
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self.collator(text.collate_fn, VALIDATION_EPOCH),
            num_workers=text.num_workers,
            multiprocessing_context=worker_context(text.num_workers),
            worker_init_fn=ignore_stop_signals,
        )
