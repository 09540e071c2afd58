"""Lightning DataModule: cached shards -> instances (rebuilt each epoch) -> corrupted batches."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from clozelab.core.batch import Batch, ReferenceBatch
from clozelab.core.errors import ClozelabError, config_error
from clozelab.core.signals import ignore_stop_signals
from clozelab.data import instances
from clozelab.data.collate import Collator
from clozelab.data.dataset import InstanceDataset
from clozelab.data.preprocess import Prepared
from clozelab.data.sampler import EpochSampler
from clozelab.data.shards import open_split
from clozelab.data.structure import STRUCTURE_KINDS, structure_rows

VALIDATION_EPOCH = 1 << 20  # a fixed "epoch" for validation instances and masks


def worker_context(num_workers: int):
    """The start method of the loader's worker processes: the platform's own, except inside a
    process pool that installed another one (a joblib/loky sweep job: its "loky" context cannot
    start torch's workers), where Linux forks and other systems spawn."""
    if num_workers == 0:
        return None
    method = multiprocessing.get_start_method(allow_none=True)
    if method in (None, "fork", "spawn", "forkserver"):
        return None
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position Lightning stores in checkpoints and restores on resume.

    Lightning saves ``state_dict()`` of a train loader that has one (the fit loop's
    ``combined_loader`` state) and calls ``load_state_dict`` on the rebuilt loader of a resumed
    run before iterating it; the sampler then starts after the batches already trained on.
    ``position`` returns the number of batches of this epoch whose training step has run.
    ``generator`` is seeded from (seed, epoch), so the worker seeds never draw from (and never
    shift) the global RNG the model's dropout uses.
    """

    epoch: int = 0
    position: Callable[[], int] | None = None

    def state_dict(self) -> dict:
        batches = int(self.position()) if self.position is not None else 0
        return {
            "epoch": self.epoch,
            "batches": batches,
            "batch_size": self.batch_size,
            "world_size": getattr(self.sampler, "world_size", 1),
        }

    def load_state_dict(self, state: dict) -> None:
        """Skip the batches already trained on. The ranks' step-k batches together are items
        [k*G, (k+1)*G) of the epoch's order (G = batch_size x world_size), so the position
        carries over to any world size with the same global batch G."""
        if int(state.get("epoch", -1)) != self.epoch:
            return  # saved in another epoch (e.g. at its very end): this epoch starts afresh
        world = getattr(self.sampler, "world_size", 1)
        saved_world = int(state.get("world_size", 1))
        saved_batch = int(state.get("batch_size") or 0)
        if saved_batch * saved_world != self.batch_size * world:
            same_world = saved_world == world
            raise ClozelabError(
                f"data.batch_size={self.batch_size}"
                + ("" if same_world else f" on {world} ranks")
                + ": the checkpoint being resumed was trained with "
                f"data.batch_size={saved_batch}"
                + ("" if same_world else f" on {saved_world} ranks")
                + ", so its position in the epoch cannot be restored. Fix: re-launch with the "
                "global batch it was written with (data.batch_size x trainer.devices x "
                f"trainer.num_nodes = {saved_batch * saved_world}), or use a new "
                "hydra.run.dir."
            )
        self.sampler.start = min(int(state["batches"]) * self.batch_size, len(self.sampler))


def instance_length(corruption, kind: str, max_seq_length: int) -> int:
    """Length of the raw instances: the longest whose corrupted form fits ``max_seq_length``
    (``Corruption.instance_length``; T5 span corruption builds longer raw rows, insertion shorter
    ones). Without a corruption it is ``max_seq_length``."""
    if corruption is None:
        return max_seq_length
    n_special = 3 if kind in instances.TWO_SEGMENT_KINDS else 2  # [CLS] A [SEP] (B [SEP])
    return int(corruption.instance_length(max_seq_length, n_special))


class PretrainDataModule(pl.LightningDataModule):
    def __init__(
        self,
        prepared: Prepared,
        corruption,
        *,
        instances: str = "segment_pair",
        max_seq_length: int = 128,
        short_seq_prob: float = 0.1,
        sop_single_sentence: str = "random_document",
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        dialogue=None,
        reference_corruption=None,
        pad_to_multiple_of: int = 8,
        features: tuple[str, ...] = (),
        reorder_share: float = 0.5,
        reorder_segments: int = 3,
    ):
        """``dialogue``: a ``DialogueStream`` (ERNIE DLM) whose batches join the text batches.
        ``reference_corruption``: validation also runs on the same sequences corrupted by it (a
        fixed-rate yardstick, ``validation_reference``). ``pad_to_multiple_of``: each batch's width
        is rounded up to it (``data.pad_to_multiple_of``; ``max_seq_length``: one shape).
        ``features``: per-token labels of ``token_features`` the objectives read.
        ``reorder_share`` / ``reorder_segments``: the share of reordered paragraphs and the most
        segments of one (``data.instances=structure``, ERNIE 2.0)."""
        super().__init__()
        self.dialogue, self.reference_corruption = dialogue, reference_corruption
        self.prepared, self.corruption = prepared, corruption
        self.kind, self.max_seq_length, self.short_seq_prob = (
            instances,
            max_seq_length,
            short_seq_prob,
        )
        self.sop_single_sentence = sop_single_sentence
        self.features = tuple(features)
        self.reorder_share, self.reorder_segments = reorder_share, reorder_segments
        self._epoch0: np.ndarray | None = None  # epoch 0's training table, for summaries
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.pad_to_multiple_of = pad_to_multiple_of
        tok = prepared.tokenizer
        self.train_shards = open_split(prepared.train_dir, verify=False)
        self.validation_shards = open_split(prepared.validation_dir, verify=False)
        self._cls, self._sep, self._pad = tok.cls_id, tok.sep_id, tok.pad_id
        self.instance_length = instance_length(corruption, instances, max_seq_length)

    @classmethod
    def from_config(cls, data_cfg, prepared: Prepared, corruption, seed: int, **extra):
        """The data module that ``data_cfg`` (a run's ``data`` node) describes; ``extra``: the
        arguments a config does not hold (``dialogue``, ``reference_corruption``, ``features``)
        or overrides of it (e.g. ``num_workers=0``)."""
        options = dict(
            instances=data_cfg.instances,
            max_seq_length=data_cfg.max_seq_length,
            short_seq_prob=data_cfg.short_seq_prob,
            sop_single_sentence=data_cfg.get("sop_single_sentence", "random_document"),
            batch_size=data_cfg.batch_size,
            num_workers=data_cfg.get("num_workers", 0),
            pad_to_multiple_of=data_cfg.get("pad_to_multiple_of", 8),
            reorder_share=data_cfg.get("reorder_share", 0.5),
            reorder_segments=data_cfg.get("reorder_segments", 3),
        )
        return cls(prepared, corruption, seed=seed, **{**options, **extra})

    def dataset(self, split: str, epoch: int) -> InstanceDataset:
        shards = self.train_shards if split == "train" else self.validation_shards
        rng = np.random.default_rng([self.seed, epoch, 0 if split == "train" else 1])
        if self.kind == "structure":
            table = structure_rows(
                shards,
                self.instance_length,
                self.short_seq_prob,
                rng,
                self.reorder_share,
                self.reorder_segments,
            )
        else:
            table = instances.build(
                self.kind,
                shards,
                self.instance_length,
                self.short_seq_prob,
                rng,
                self.sop_single_sentence,
            )
        return InstanceDataset(shards, table, self.kind, self._cls, self._sep, self.features)

    def _first_train_table(self) -> np.ndarray:
        """Epoch 0's training instances, built once for the summaries below."""
        if self._epoch0 is None:
            self._epoch0 = self.dataset("train", 0).table
        return self._epoch0

    def pair_kinds(self) -> dict[str, float] | None:
        """Share of each pair kind among epoch 0's training pairs (None for packed instances):
        how many negatives are swaps and how many random-document pairs (``preview``, run log)."""
        if self.kind == "structure":
            return instances.pair_kind_shares(self._first_train_table(), STRUCTURE_KINDS)
        if self.kind not in instances.PAIR_LABEL_KEYS:
            return None
        return instances.pair_kind_shares(self._first_train_table())

    def check_training_batches(self, world: int = 1) -> None:
        """Refuse a corpus whose training split fills no batch: every rank drops its last
        incomplete batch, so Lightning would stop after 0 steps and the run end "completed"."""
        n = len(self._first_train_table())
        if n // max(world, 1) < self.batch_size:
            ranks = f" over {world} ranks" if world > 1 else ""
            raise config_error(
                "data.batch_size",
                self.batch_size,
                f"the corpus gives {n} training instances of up to {self.instance_length} "
                f"tokens{ranks}, fewer than one batch",
                "use a larger data.corpus, a smaller data.batch_size or a smaller "
                "data.validation_fraction",
            )

    def mean_train_tokens(self) -> float:
        """Mean tokens of a training sequence (epoch 0's instances; padding excluded)."""
        table = self._first_train_table()
        return float(instances.lengths(self.kind, table).mean()) if len(table) else 0.0

    def _loader(
        self,
        split: str,
        epoch: int,
        shuffle: bool,
        start: int = 0,
        corruption=None,
        batch_type: type[Batch] = Batch,
    ) -> DataLoader:
        dataset = self.dataset(split, epoch)
        rank, world = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        )
        sampler = EpochSampler(len(dataset), self.seed, epoch, shuffle, rank, world, start)
        collator = Collator(
            self._pad, corruption or self.corruption, self.seed, self.pad_to_multiple_of, batch_type
        )
        collator.epoch = epoch
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, epoch, 11]).generate_state(1)[0])
        )
        loader = ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collator,
            num_workers=self.num_workers,
            drop_last=shuffle,
            persistent_workers=False,
            generator=generator,
            multiprocessing_context=worker_context(self.num_workers),
            worker_init_fn=ignore_stop_signals,  # Ctrl-C reaches the workers too
        )
        loader.epoch = epoch
        return loader

    def _batches_done(self) -> int:
        """Batches of the current epoch whose training step has run (0 outside training)."""
        if self.trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer else 0
        loader = self._loader("train", epoch, shuffle=True)
        if self.dialogue is not None:  # text and dialogue batches (data/dialogue_stream.py)
            loader = self.dialogue.train_loader(loader)
        loader.position = self._batches_done
        return loader

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The text loader, then the dialogue and reference ones when configured (each collates
        the ``Batch`` class of its stream)."""
        text = self._loader("validation", VALIDATION_EPOCH, shuffle=False)
        loaders = {"text": text}
        if self.dialogue is not None:
            loaders["dialogue"] = self.dialogue.val_loader(text)
        if self.reference_corruption is not None:
            loaders["reference"] = self._loader(
                "validation",
                VALIDATION_EPOCH,
                False,
                corruption=self.reference_corruption,
                batch_type=ReferenceBatch,
            )
        return text if len(loaders) == 1 else list(loaders.values())
