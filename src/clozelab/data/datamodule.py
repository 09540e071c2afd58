"""Lightning DataModule: cached shards -> instances (rebuilt each epoch) -> corrupted batches."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from clozelab.data import instances
from clozelab.data.collate import Collator
from clozelab.data.dataset import InstanceDataset
from clozelab.data.preprocess import Prepared
from clozelab.data.sampler import EpochSampler
from clozelab.data.shards import open_split

VALIDATION_EPOCH = 1 << 20  # a fixed "epoch" for validation instances and masks


class PretrainDataModule(pl.LightningDataModule):
    def __init__(
        self,
        prepared: Prepared,
        corruption,
        *,
        instances: str = "segment_pair",
        max_seq_length: int = 128,
        short_seq_prob: float = 0.1,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.prepared, self.corruption = prepared, corruption
        self.kind, self.max_seq_length, self.short_seq_prob = (
            instances,
            max_seq_length,
            short_seq_prob,
        )
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        tok = prepared.tokenizer
        self.train_shards = open_split(prepared.train_dir, verify=False)
        self.validation_shards = open_split(prepared.validation_dir, verify=False)
        self._cls, self._sep, self._pad = tok.cls_id, tok.sep_id, tok.pad_id

    def dataset(self, split: str, epoch: int) -> InstanceDataset:
        shards = self.train_shards if split == "train" else self.validation_shards
        rng = np.random.default_rng([self.seed, epoch, 0 if split == "train" else 1])
        table = instances.build(self.kind, shards, self.max_seq_length, self.short_seq_prob, rng)
        return InstanceDataset(shards, table, self.kind, self._cls, self._sep)

    def _loader(self, split: str, epoch: int, shuffle: bool, start: int = 0) -> DataLoader:
        dataset = self.dataset(split, epoch)
        rank, world = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        )
        sampler = EpochSampler(len(dataset), self.seed, epoch, shuffle, rank, world, start)
        collator = Collator(self._pad, self.corruption, self.seed)
        collator.epoch = epoch
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collator,
            num_workers=self.num_workers,
            drop_last=shuffle,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer else 0
        return self._loader("train", epoch, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", VALIDATION_EPOCH, shuffle=False)
