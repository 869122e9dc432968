"""The DataModule shared by the referring-video datasets: sources -> datasets -> loaders with the collate.

A subclass says where its sources come from (``make_sources``); this class builds the training clips
(spec §2.3-2.4), the whole-video evaluation items and the loaders, and shards them over processes itself:
training with a seeded shuffle per epoch, evaluation without the padded duplicates a ``DistributedSampler``
would add (they would count twice in J&F). Use it with ``Trainer(use_distributed_sampler=False)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from mpgsam2.data import (
    ClipTransform,
    ReferringClipDataset,
    ReferringCollate,
    ReferringVideoEvalDataset,
    ReferringVideoSource,
)
from mpgsam2.data.sources import SwappedCaptionSource
from mpgsam2.text.tokenizer import Beit3Tokenizer

__all__ = ["ReferringVideoDataModule", "ShardSampler"]


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardSampler(Sampler[int]):
    """This process's share of ``0..n-1``.

    Training (``shuffle=True``): a permutation seeded by (seed, epoch), cut into equal shares (the tail that does
    not divide evenly is dropped so that every process runs the same number of steps). Evaluation: indices
    ``rank, rank + world, ...`` without padding. ``set_epoch`` also forwards the epoch to the dataset, whose
    augmentation draws depend on it.
    """

    def __init__(self, dataset: object, shuffle: bool, seed: int = 0) -> None:
        self.dataset = dataset
        self.n = len(dataset)  # type: ignore[arg-type]
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rank, self.world = _rank_and_world()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.rank, self.n, self.world))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        share = self.n // self.world if self.world > 1 else self.n
        return iter(order[self.rank * share : (self.rank + 1) * share])

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.n, self.world))
        return self.n // self.world if self.world > 1 else self.n


class ReferringVideoDataModule(L.LightningDataModule):
    """Training, validation and prediction loaders over referring-video sources.

    Args:
        tokenizer_path: the sentencepiece model (``beit3.spm`` for the real datasets).
        num_frames: T, frames per training clip (5 Ref-YTVOS, 8 MeViS).
        sam_size / beit_size: sides of the two views; ``train.py`` takes them from the model.
        batch_size: clips per process and step (1 in the original's video stages).
        num_workers: DataLoader worker processes.
        hflip_p / photometric: training augmentation (spec §2.4).
        seed: base seed of clip sampling and augmentation.
        val_max_frames: keep only the first N frames of each validation video (None: all, the protocol).
        swap_expressions: evaluate every expression with the caption of another object of the same video (a
            check that the model reads the sentence; J&F should collapse).
        val_batch_size: expressions per validation batch; > 1 needs videos of equal length and size (then the
            Lightning module runs them as one batched clip, see ``RVOSLitModule.predict_batch``).
    """

    # builds the loaders' collate_fn from the tokenizer (RefCOCO: the image-batch variant)
    collate_class: type[ReferringCollate] = ReferringCollate

    def __init__(
        self,
        tokenizer_path: str,
        num_frames: int = 5,
        sam_size: int = 1024,
        beit_size: int = 224,
        batch_size: int = 1,
        num_workers: int = 0,
        hflip_p: float = 0.5,
        photometric: bool = True,
        seed: int = 42,
        val_max_frames: int | None = None,
        swap_expressions: bool = False,
        val_batch_size: int = 1,
    ) -> None:
        super().__init__()
        self.tokenizer_path = tokenizer_path
        self.num_frames = num_frames
        self.sam_size = sam_size
        self.beit_size = beit_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.hflip_p = hflip_p
        self.photometric = photometric
        self.seed = seed
        self.val_max_frames = val_max_frames
        self.swap_expressions = swap_expressions
        self.val_batch_size = val_batch_size
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self._collate: ReferringCollate | None = None

    # ------------------------------------------------------------------ to implement
    def train_source(self) -> ReferringVideoSource:
        raise NotImplementedError(f"{type(self).__name__} has no training split")

    def val_source(self) -> ReferringVideoSource:
        raise NotImplementedError(f"{type(self).__name__} has no validation split")

    def make_train_dataset(self) -> Dataset:
        """The training set: clips of ``train_source()`` (spec §2.3-2.4)."""
        return ReferringClipDataset(
            self.train_source(), self.num_frames, self.train_transform(), seed=self.seed
        )

    def make_val_dataset(self) -> Dataset:
        """The validation / prediction set: whole videos of ``val_source()`` (captions swapped on request)."""
        source = self.val_source()
        if self.swap_expressions:
            source = SwappedCaptionSource(source, seed=self.seed)
        return ReferringVideoEvalDataset(source, self.eval_transform(), self.val_max_frames)

    # ------------------------------------------------------------------ Lightning hooks
    @property
    def collate(self) -> ReferringCollate:
        if self._collate is None:
            self._collate = self.collate_class(Beit3Tokenizer(Path(self.tokenizer_path)))
        return self._collate

    @property
    def tokenizer_vocab_size(self) -> int:
        """Ids the tokenizer can produce (the model's BEiT-3 vocabulary must be at least this)."""
        return int(self.collate.tokenizer.vocab_size)

    def train_transform(self) -> ClipTransform:
        return ClipTransform(
            self.sam_size, self.beit_size, train=True, hflip_p=self.hflip_p, photometric=self.photometric
        )

    def eval_transform(self) -> ClipTransform:
        return ClipTransform(self.sam_size, self.beit_size, train=False)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self.make_train_dataset()
        if stage in (None, "fit", "validate", "test", "predict") and self.val_dataset is None:
            self.val_dataset = self.make_val_dataset()

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "call setup('fit') first"
        return self._loader(self.train_dataset, shuffle=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None, "call setup('validate') first"
        return self._loader(self.val_dataset, shuffle=False, batch_size=self.val_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def _loader(self, dataset: object, shuffle: bool, batch_size: int) -> DataLoader:
        sampler = ShardSampler(dataset, shuffle=shuffle, seed=self.seed)
        return DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            drop_last=shuffle,
            persistent_workers=False,  # the dataset's epoch must reach fresh workers (see ReferringClipDataset)
        )

    def steps_per_epoch(self) -> int:
        """Training steps per epoch on one process (after ``setup('fit')``)."""
        assert self.train_dataset is not None
        _, world = _rank_and_world()
        return math.floor(len(self.train_dataset) // world / self.batch_size)
