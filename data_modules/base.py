"""The DataModule shared by the referring-video datasets: sources -> datasets -> loaders with the collate.

A subclass says how to read a split (``split_source``); this class builds the training clips (spec §2.3-2.4),
the whole-video evaluation items and the loaders, and shards them over processes itself: training with a seeded
shuffle per epoch, evaluation without the padded duplicates a ``DistributedSampler`` would add (they would count
twice in J&F). Use it with ``Trainer(use_distributed_sampler=False)``.

Validation during training (``val_split``) uses only splits with ground truth: a split without masks is refused
when training starts, ``null`` validates nothing (the paper's Ref-YouTube-VOS recipe: the server scores valid),
and ``holdout`` validates on ``holdout_videos`` training videos that are then left out of training.

Resuming: the data module's ``state_dict`` records the epoch and the number of training batches done in it; a
resumed run's sampler skips exactly those, so that it continues with the next batch of the interrupted run.
The loaders take their worker seeds from their own generators (reseeded per epoch), never from the global ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mpgsam2.data import (
    ClipTransform,
    ReferringClipDataset,
    ReferringCollate,
    ReferringVideoEvalDataset,
    ReferringVideoSource,
)
from mpgsam2.data.sources import SwappedCaptionSource, VideoSubsetSource, holdout_video_ids
from mpgsam2.distributed import rank_and_world
from mpgsam2.evaluation.benchmarks import Benchmark
from mpgsam2.evaluation.staging import EvalTarget
from mpgsam2.text.tokenizer import Beit3Tokenizer

__all__ = ["DataConfigError", "HOLDOUT", "ReferringVideoDataModule", "ShardSampler"]

HOLDOUT = "holdout"  # val_split value: the held-out training videos


class DataConfigError(ValueError):
    """The data configuration cannot work (the message says which key and what to do)."""


class ShardSampler(Sampler[int]):
    """This process's share of ``0..n-1``.

    Training (``shuffle=True``): a permutation seeded by (seed, epoch), cut into equal shares (the tail that does
    not divide evenly is dropped so that every process runs the same number of steps). Evaluation: indices
    ``rank, rank + world, ...`` without padding. ``set_epoch`` also forwards the epoch to the dataset, whose
    augmentation draws depend on it, and reseeds ``loader_generator`` (the DataLoader's, from which its worker
    seeds are drawn). ``resume_at(epoch, skip)`` makes the next pass over ``epoch`` start after ``skip`` indices.
    """

    def __init__(self, dataset: object, shuffle: bool, seed: int = 0) -> None:
        self.dataset = dataset
        self.n = len(dataset)  # type: ignore[arg-type]
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rank, self.world = rank_and_world()
        self.loader_generator = torch.Generator()
        self._resume: tuple[int, int] | None = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loader_generator.manual_seed(self.seed * 1_000_003 + epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def resume_at(self, epoch: int, skip: int) -> None:
        """Start the next pass over ``epoch`` after its first ``skip`` indices (a resumed run)."""
        self.set_epoch(epoch)
        self._resume = (epoch, skip)

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.n, self.world))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        share = self.n // self.world if self.world > 1 else self.n
        return order[self.rank * share : (self.rank + 1) * share]

    def __iter__(self) -> Iterator[int]:
        indices = self._indices()
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = None
            if epoch == self.epoch:
                indices = indices[skip:]
        return iter(indices)

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.n, self.world))
        return self.n // self.world if self.world > 1 else self.n


class ReferringVideoDataModule(L.LightningDataModule):
    """Training, validation and prediction loaders over referring-video sources.

    Args:
        tokenizer_path: the sentencepiece model (``beit3.spm`` for the real datasets).
        val_split: the split validated during training: one with ground truth (e.g. MeViS ``valid_u``),
            ``"holdout"`` (``holdout_videos`` training videos, left out of training; not a paper protocol) or
            None (no validation during training). A split without masks is refused when training starts.
        holdout_videos: how many training videos to hold out (0: none); see
            :func:`mpgsam2.data.holdout_video_ids`.
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
    # the row of mpgsam2.evaluation.benchmarks.BENCHMARKS this dataset is evaluated by (every subclass names its own)
    benchmark: str

    def __init__(
        self,
        tokenizer_path: str,
        val_split: str | None = None,
        holdout_videos: int = 0,
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
        if holdout_videos < 0:
            raise DataConfigError(f"data.holdout_videos must be >= 0, got {holdout_videos}")
        if val_split == HOLDOUT and holdout_videos == 0:
            raise DataConfigError("data.val_split=holdout needs data.holdout_videos > 0")
        self.val_split = val_split
        self.holdout_videos = holdout_videos
        self._resume_state: dict[str, int] | None = None
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
    def split_source(self, split: str) -> ReferringVideoSource:
        """The reader of ``split`` (e.g. "train", "valid")."""
        raise NotImplementedError(f"{type(self).__name__} cannot read split {split!r}")

    # ------------------------------------------------------------------ splits
    def train_source(self) -> ReferringVideoSource:
        """The training videos: the train split, less the held-out videos."""
        source = self.split_source("train")
        if self.holdout_videos:
            source = VideoSubsetSource(source, holdout_video_ids(source, self.holdout_videos), exclude=True)
        return source

    def val_source(self) -> ReferringVideoSource:
        """The validation videos (``val_split``).

        Raises:
            DataConfigError: no validation split is configured.
        """
        if self.val_split is None:
            raise DataConfigError(f"{type(self).__name__}: no validation split (data.val_split is null)")
        if self.val_split == HOLDOUT:
            train = self.split_source("train")
            return VideoSubsetSource(train, holdout_video_ids(train, self.holdout_videos), tag=HOLDOUT)
        return self.split_source(self.val_split)

    @property
    def validates(self) -> bool:
        """Whether training validates (a validation split is configured)."""
        return self.val_split is not None

    def check_validation_split(self) -> None:
        """Refuse a validation split without ground truth (at start-up, not after an epoch of training).

        Raises:
            DataConfigError: naming the split, the folder and the alternatives.
        """
        if not self.validates:
            return
        source = self.val_source()
        if not getattr(source, "has_masks", True):
            raise DataConfigError(
                f"data.val_split={self.val_split!r}: {source!r} has no ground-truth masks (the released split "
                "is scored by a server), so it cannot validate a training run. Validate on held-out training "
                "videos (data.val_split=holdout data.holdout_videos=N), or not at all (data.val_split=null; then "
                "write the submission with eval.py)"
            )

    def make_train_dataset(self) -> Dataset:
        """The training set: clips of ``train_source()`` (spec §2.3-2.4)."""
        return ReferringClipDataset(
            self.train_source(), self.num_frames, self.train_transform(), seed=self.seed
        )

    def make_val_dataset(self) -> Dataset:
        """The validation / prediction set: whole videos of ``val_source()`` (captions swapped on request)."""
        return ReferringVideoEvalDataset(
            self.evaluated(self.val_source()), self.eval_transform(), self.val_max_frames
        )

    def evaluated(self, source: ReferringVideoSource) -> ReferringVideoSource:
        """``source`` as it is evaluated: each caption swapped for another object's of the same video when
        ``swap_expressions`` asks (a check that the model reads the sentence), else unchanged."""
        return SwappedCaptionSource(source, seed=int(self.seed)) if self.swap_expressions else source

    def eval_targets(self, bench: Benchmark, split: str | None = None) -> list[EvalTarget]:
        """What ``eval.py`` predicts or scores on ``bench``: ``split``'s reader, or with ``split=None`` the
        validation source, or, where the config validates on nothing (the Ref-YouTube-VOS recipes), the
        benchmark's default split; captions swapped on request (:meth:`evaluated`).

        Raises:
            DataConfigError: the benchmark scores annotator sets this dataset does not have.
        """
        if bench.annotator_sets:
            raise DataConfigError(
                f"{type(self).__name__} has no annotator sets; the {bench.title} benchmark scores "
                f"{bench.annotator_sets} (use data=davis)"
            )
        if split is None and self.val_split is None:
            source = self.split_source(bench.default_split)
        elif split is None:
            source = self.val_source()
        else:
            source = self.split_source(split)
        return [EvalTarget(self.evaluated(source))]

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
        if stage in (None, "fit"):
            self.check_validation_split()
            if self.train_dataset is None:
                self.train_dataset = self.make_train_dataset()
        if (
            stage in (None, "fit", "validate", "test", "predict")
            and self.val_dataset is None
            and self.validates
        ):
            self.val_dataset = self.make_val_dataset()

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "call setup('fit') first"
        loader = self._loader(self.train_dataset, shuffle=True, batch_size=self.batch_size)
        if self._resume_state is not None:
            # a resumed run: continue the interrupted epoch after the batches it had done
            epoch, done = self._resume_state["epoch"], self._resume_state["batches_done"]
            loader.sampler.resume_at(epoch, done * self.batch_size)  # type: ignore[attr-defined]
            self._resume_state = None
        return loader

    def val_dataloader(self) -> DataLoader | list:
        if not self.validates:
            return []  # no validation split: Lightning runs no validation
        assert self.val_dataset is not None, "call setup('validate') first"
        return self._loader(self.val_dataset, shuffle=False, batch_size=self.val_batch_size)

    def state_dict(self) -> dict[str, int]:
        """Where training stands: the epoch and the training batches done in it (stored in checkpoints)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or self.train_dataset is None:
            return {}
        # counted when the batch's step has finished, at every point Lightning saves a checkpoint
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": int(trainer.current_epoch), "batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict:
            self._resume_state = {
                "epoch": int(state_dict["epoch"]),
                "batches_done": int(state_dict["batches_done"]),
            }

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
            # worker seeds from the sampler's per-epoch generator, not the global one: creating a loader then
            # draws nothing from torch's global state, which a resumed run restores (RandomStateCheckpoint)
            generator=sampler.loader_generator,
        )

    def steps_per_epoch(self) -> int:
        """Training steps per epoch on one process (after ``setup('fit')``)."""
        assert self.train_dataset is not None
        _, world = rank_and_world()
        return math.floor(len(self.train_dataset) // world / self.batch_size)
